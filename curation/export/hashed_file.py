"""Export files whose sha256 (for the manifest) is computed as they are written: no second read of a large file."""

from __future__ import annotations

import hashlib
from pathlib import Path


class HashedWriter:
    """A text file written a line at a time; lines are buffered and written, hashed and counted a block at a time."""

    BLOCK_LINES = 4096

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.handle, self.digest, self.lines = path, open(path, "wb"), hashlib.sha256(), 0
        self._pending: list[str] = []

    def write_line(self, text: str) -> None:
        self._pending.append(text)
        if len(self._pending) >= self.BLOCK_LINES:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            data = ("\n".join(self._pending) + "\n").encode("utf-8")
            self.handle.write(data)
            self.digest.update(data)
            self.lines += len(self._pending)
            self._pending = []

    def flush(self) -> None:
        """Everything written so far is in the file (to be read back while writing goes on)."""
        self._write_pending()
        self.handle.flush()

    def close(self) -> str:
        """The file's sha256."""
        self._write_pending()
        self.handle.close()
        return self.digest.hexdigest()
