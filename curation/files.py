"""Reading input files safely: only regular files, only inside the folder the user named, and every file name kept
exactly, whatever its bytes.

A folder handed to ingest may hold things that are not images: a symlink to /etc or to another user's data (it
would be stored and later exported), a FIFO or a device named `x.jpg` (reading it hangs or never ends), a file
name that is not valid UTF-8 (the database cannot store it as text). Each becomes a quarantine record with its
reason, and the rest of the folder goes in.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes, unquote_to_bytes

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
ESCAPED_PREFIX = "file://"


class UnsafeFile(ValueError):
    """A path that must not be read; `reason` is its quarantine code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Discovery:
    root: Path
    files: list[Path] = field(default_factory=list)  # regular image files, sorted: every run sees the same order
    refused: list[tuple[Path, UnsafeFile]] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def stored_path(path: Path | str) -> str:
    """The text the store keeps for a local file: the absolute path itself, or, when the name is not valid UTF-8
    (Python carries such bytes as surrogate escapes), a `file://` URI with every byte percent-encoded. Plain paths
    start with `/`, so the two forms never collide and `local_path` restores the exact bytes."""
    text = os.path.abspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return ESCAPED_PREFIX + quote_from_bytes(os.fsencode(text), safe="/")


def local_path(stored: str) -> str:
    """The path to open for a stored path (see stored_path); other strings are returned as they are."""
    if stored.startswith(ESCAPED_PREFIX):
        return os.fsdecode(unquote_to_bytes(stored[len(ESCAPED_PREFIX):]))
    return stored


def inside(path: Path | str, root: Path | str) -> bool:
    """Whether `path`, symlinks resolved, lies in `root` (symlinks resolved)."""
    resolved, base = os.path.realpath(path), os.path.realpath(root)
    return resolved == base or resolved.startswith(base.rstrip(os.sep) + os.sep)


def check_readable(path: Path | str, root: Path | str | None = None, allow_outside_root: bool = False) -> None:
    """UnsafeFile unless `path` is a regular file (after symlinks) and, with a root, lies inside it."""
    if root is not None and not allow_outside_root and not inside(path, root):
        raise UnsafeFile("outside_root", f"{_name(path)} points outside {_name(root)} "
                                         f"(to {_name(os.path.realpath(path))})")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        kind = "a broken symlink" if os.path.islink(path) else "missing"
        raise UnsafeFile("unreadable_image", f"{_name(path)} is {kind}") from None
    except OSError as exc:
        raise UnsafeFile("unreadable_image", f"{_name(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UnsafeFile("not_regular_file", f"{_name(path)} is {_file_kind(mode)}, not a regular file")


def file_digest(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes: an image's identity in the store, a checkpoint's in a scorer version."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def discover_images(directory: Path | str, allow_outside_root: bool = False) -> Discovery:
    """Image files under `directory`, recursively. Directory symlinks are not followed (a loop, or a way out of the
    folder); file symlinks are read only when they stay inside it, unless `allow_outside_root`."""
    root = Path(os.path.abspath(directory))
    if not root.is_dir():
        raise FileNotFoundError(f"image directory {directory} does not exist")
    found = Discovery(root)
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders.sort()
        for name in sorted(names + [d for d in subfolders if os.path.islink(os.path.join(folder, d))]):
            path = Path(folder, name)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                check_readable(path, root, allow_outside_root)
            except UnsafeFile as exc:
                found.refused.append((path, exc))
                continue
            found.files.append(path)
        subfolders[:] = [d for d in subfolders if not os.path.islink(os.path.join(folder, d))]
    found.files.sort()
    return found


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _name(path: Path | str) -> str:
    """A path as the user should read it: undecodable bytes shown as \\xNN."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")
