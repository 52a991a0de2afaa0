"""The child process that makes an export's symlinks: `python -I -S linker.py SPOOL IMAGES_DIR`.

Symlinks are the floor of a large export: each is a journaled directory insert, ~20 µs on tmpfs and 60-300 µs on a
busy ext4 disk (600k of them: 40-90 s), and several threads in one directory are slower still (the directory's lock
serialises them). So they start in the export's first pass and run beside everything else in a process of their
own (a thread would wait for the exporter's GIL after every symlink). Requests come through a spool file rather
than a pipe, so the exporter never waits for the disk and memory stays constant: NUL-separated (source, name)
pairs, appended as the exporter goes. The exporter closes this process's stdin after its last request.

The file is run by path, not with -m: importing it as `curation.export.linker` would import the package and its
dependencies (numpy, SQLAlchemy) into a process that needs the standard library only (~9 MiB resident).
"""

import os
import select
import sys

CHUNK = 1 << 20


def make_links(spool_path: str, directory: str) -> None:
    spool, rest, done = open(spool_path, "rb", buffering=0), b"", False
    os.chdir(directory)
    while True:
        chunk = spool.read(CHUNK)
        if not chunk:
            if done:
                break
            if select.select([sys.stdin], [], [], 0.05)[0] and not os.read(sys.stdin.fileno(), 1):
                done = True  # the exporter closed stdin after its last request: read the spool to its end once more
            continue
        parts = (rest + chunk).split(b"\0")
        rest = parts.pop()
        if len(parts) % 2:
            rest = parts.pop() + b"\0" + rest
        for i in range(0, len(parts), 2):
            os.symlink(parts[i], parts[i + 1])
    if rest:
        sys.exit("incomplete link request at the end of the spool")


if __name__ == "__main__":
    make_links(sys.argv[1], sys.argv[2])
