"""The export's images/ folder: each image once, as a symlink (default) or a copy, listed with its sha256 in
images.sha256 (`sha256sum -c images.sha256` verifies every image of the export).

In link mode the first pass requests a link for every kept image (`request_link`), made by a child process (see
curation/export/linker.py) while the export goes on; the location pass then lists the images it writes
(`list_linked`) and names those dedup removed (`unlink_later`), whose links go once the child is done (`wait`).
Copies, and images of the reasoning file, are placed one at a time (`place`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from curation.export import linker
from curation.export.hashed_file import HashedWriter
from curation.files import local_path

IMAGES_DIR = "images"
IMAGES_LISTING = "images.sha256"


def image_name(sha256: str, uri: str) -> str:
    """The file name of an image in images/: its sha256 and its source's suffix (else .jpg). The suffix is what
    follows the basename's last dot unless only dots precede it, as os.path.splitext has it, at a fraction of its
    cost (this runs twice per exported image)."""
    dot, start = uri.rfind("."), uri.rfind("/") + 1
    if dot > start and (uri[dot - 1] != "." or uri[start:dot].strip(".")):  # a name before the dot, not only dots
        suffix = uri[dot:].lower()
        if len(suffix) <= 6:
            return sha256 + suffix
    return sha256 + ".jpg"


class Linker:
    """Symlinks in `images_dir` made by the linker child process; `wait` raises if any failed."""

    BATCH = 5000

    def __init__(self, images_dir: str) -> None:
        self.spool = tempfile.NamedTemporaryFile(prefix="geocurate-links-", delete=False)
        self.process = subprocess.Popen([sys.executable, "-I", "-S", linker.__file__, self.spool.name, images_dir],
                                        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.requested = 0
        self._pending: list[str] = []

    def link(self, source: str, name: str) -> None:
        self._pending += (source, name)
        if len(self._pending) >= 2 * self.BATCH:
            self._send()

    def _send(self) -> None:
        if self._pending:
            self.spool.write(("\0".join(self._pending) + "\0").encode("utf-8", "surrogateescape"))  # = os.fsencode
            self.spool.flush()
            self.requested += len(self._pending) // 2
            self._pending = []

    def wait(self) -> None:
        """All requested links exist (the child is done)."""
        try:
            self._send()
            self.spool.close()
            self.process.stdin.close()
            error = self.process.stderr.read().decode(errors="replace").strip()
            if self.process.wait() != 0:
                raise OSError(f"making image links failed: {error.splitlines()[-1] if error else '?'}")
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.spool.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool.name)


class ImagePlacer:
    """Links or copies each image into images/ once, and lists it in images.sha256."""

    def __init__(self, root: Path, mode: str):
        self.root, self.mode, self.placed = root, mode, 0
        self.listing = HashedWriter(root / IMAGES_LISTING)
        self.images_dir = os.path.join(os.path.abspath(root), IMAGES_DIR)
        os.makedirs(self.images_dir, exist_ok=True)
        self.linker = Linker(self.images_dir) if mode == "link" else None
        self.requested = self.unlinked = 0
        self._unlink: list[str] = []

    @property
    def linking(self) -> bool:
        """Links are being requested ahead (link mode, until `wait`)."""
        return self.linker is not None

    def request_link(self, sha256: str, uri: str) -> None:
        # os.path.abspath is the identity on an already normal absolute path (the usual uri), and costs 6 µs
        normal = uri[:1] == "/" and "/." not in uri and "//" not in uri and uri[-1:] != "/"
        self.linker.link(uri if normal else os.path.abspath(local_path(uri)), image_name(sha256, uri))

    def list_linked(self, sha256: str, uri: str) -> str:
        """Relative path of an image whose link was requested; listed in images.sha256."""
        relative = f"{IMAGES_DIR}/{image_name(sha256, uri)}"
        self.listing.write_line(f"{sha256}  {relative}")
        self.placed += 1
        return relative

    def unlink_later(self, sha256: str, uri: str) -> None:
        self._unlink.append(image_name(sha256, uri))

    def wait(self) -> None:
        """All requested links exist, those of removed images are gone (errors raised here)."""
        if self.linker is not None:
            linker_, self.linker = self.linker, None
            linker_.wait()
            self.requested = linker_.requested
            for name in self._unlink:
                os.unlink(os.path.join(self.images_dir, name))
            self.unlinked += len(self._unlink)
            self._unlink = []

    def remove_strays(self) -> int:
        """Links requested in the first pass that the location pass neither listed nor removed: images whose
        decision changed between the two passes (a concurrent review or quarantine). Rare; they are removed."""
        if self.mode != "link" or self.requested == self.placed + self.unlinked:
            return 0
        self.listing.flush()
        with open(self.listing.path, encoding="utf-8") as handle:
            listed = {line.rstrip("\n").split("  ", 1)[1].split("/", 1)[1] for line in handle}
        strays = [entry.name for entry in os.scandir(self.images_dir) if entry.name not in listed]
        for name in strays:
            os.unlink(os.path.join(self.images_dir, name))
        return len(strays)

    def finish(self) -> str:
        """The listing's sha256, once every image is placed."""
        return self.listing.close()

    def close(self) -> None:
        """A linker still running (the export failed) is stopped."""
        if self.linker is not None:
            self.linker.kill()

    def place(self, sha256: str, uri: str) -> str | None:
        """Relative path of the image in the export; None when a copy's source is gone (caller quarantines)."""
        relative = f"{IMAGES_DIR}/{image_name(sha256, uri)}"
        target = os.path.join(self.root, relative)
        source = os.path.abspath(local_path(uri))
        try:
            if self.mode == "copy":
                if os.path.lexists(target):
                    return relative
                if not os.path.isfile(source):
                    return None
                shutil.copyfile(source, target)
            else:
                os.symlink(source, target)
        except FileExistsError:
            return relative  # placed already (an image both in location and reasoning)
        self.listing.write_line(f"{sha256}  {relative}")
        self.placed += 1
        return relative
