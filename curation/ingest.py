"""Ingest: image files (and an optional metadata CSV) into the store, idempotently by content sha256.

Every file ends stored or quarantined with its reason: a file that is not a regular file or leaves the folder, an
image that cannot be decoded or is too small or too large, an image whose metadata row was refused, a value the
store cannot keep. One bad item never costs the rest of its batch: values are checked before the write, and a
write the database still refuses is retried row by row so only the offender is quarantined. Re-running on the same
folder adds nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from curation.files import Discovery, UnsafeFile, check_readable, discover_images, file_digest, stored_path
from curation.metadata import MetadataMatch, match_metadata, quarantine_problems, read_metadata
from curation.scoring import BadImage, open_image
from db.images import add_images
from db.limits import row_problems
from db.models import Image
from db.quarantine import quarantine
from db.upsert import refusal, write_isolated

CHUNK = 1000


@dataclass
class IngestSummary:
    added: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # quarantined images per reason code

    def refuse(self, reason: str) -> None:
        self.quarantined += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def merge(self, other: "IngestSummary") -> None:
        self.added += other.added
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.reasons = dict(Counter(self.reasons) + Counter(other.reasons))


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 1
    max_pixels: int | None = None
    allow_outside_root: bool = False

    @classmethod
    def from_settings(cls, settings) -> "ImageLimits":
        return cls(settings.min_image_side, settings.max_image_pixels, settings.allow_outside_root)


def prepare_folder(directory: Path | str, metadata_csv: Path | str | None = None, encoding: str | None = None,
                   allow_outside_root: bool = False) -> tuple[Discovery, MetadataMatch | None]:
    """The folder's image files and, with a metadata CSV, which row belongs to which of them. Raises
    FileNotFoundError for a missing folder and MetadataFileError for a CSV that cannot be read at all."""
    discovery = discover_images(directory, allow_outside_root)
    if metadata_csv is None:
        return discovery, None
    return discovery, match_metadata(metadata_csv, read_metadata(metadata_csv, encoding), discovery)


def quarantine_listing(session: Session, discovery: Discovery, match: MetadataMatch | None) -> IngestSummary:
    """What the folder's listing refused (files outside it, not regular files) and the metadata rows that match
    no image, recorded once; the summary counts the refused files."""
    summary = IngestSummary()
    for path, exc in discovery.refused:
        summary.refuse(exc.reason)
        quarantine(session, "image", stored_path(path), exc.reason, str(exc), source=str(discovery.root))
    if match is not None:
        quarantine_problems(session, match)
    return summary


def ingest_folder(session: Session, directory: Path | str, metadata_csv: Path | str | None = None,
                  encoding: str | None = None, source: str | None = None,
                  limits: ImageLimits = ImageLimits()) -> tuple[IngestSummary, MetadataMatch | None]:
    """A whole folder in the caller's transaction: refused files and metadata rows quarantined, images stored."""
    discovery, match = prepare_folder(directory, metadata_csv, encoding, limits.allow_outside_root)
    summary = quarantine_listing(session, discovery, match)
    summary.merge(ingest_images(session, discovery.files, match, discovery.root, source, limits))
    return summary, match


def ingest_images(session: Session, paths: list[Path], metadata: MetadataMatch | None = None,
                  root: Path | str | None = None, source: str | None = None,
                  limits: ImageLimits = ImageLimits()) -> IngestSummary:
    """Add images in bulk; returns how many were added, already stored (same sha256) and quarantined. With a
    metadata match, an image gets the row matched to its path relative to `root`; an image whose row was refused
    is quarantined rather than stored without its location; an image without a row is stored as it is."""
    summary = IngestSummary()
    pending: dict[str, dict[str, Any]] = {}  # by sha256: one row per content in this batch
    root = Path(root) if root is not None else (metadata.root if metadata is not None else None)
    for path in map(Path, paths):
        row = _image_row(session, path, metadata, root, source, limits, summary)
        if row is None:
            continue
        sha = row["sha256"]
        if sha in pending:
            summary.duplicates += 1
            if pending[sha]["lat"] is None and row["lat"] is not None:
                pending[sha] = row  # of two copies, keep the one whose location is known
            continue
        pending[sha] = row
        if len(pending) >= CHUNK:
            _flush(session, pending, summary)
    _flush(session, pending, summary)
    return summary


def _image_row(session: Session, path: Path, match: MetadataMatch | None, root: Path | None, source: str | None,
               limits: ImageLimits, summary: IngestSummary) -> dict[str, Any] | None:
    """The image's row, or None once it is quarantined."""
    reference = stored_path(path)
    origin = str(root or path.parent)
    relative = _relative(path, root)
    meta: dict[str, Any] = {}
    if match is not None and relative is not None:
        if relative in match.refused:
            problem = match.refused[relative]
            return _refuse(session, summary, reference, problem.reason, problem.message, match.source(problem.line))
        if relative in match.rows:
            row = match.rows[relative]
            meta, origin = row.values or {}, match.source(row.line)
    try:
        check_readable(path, root, limits.allow_outside_root)
        image = open_image(path, limits.min_side, max_pixels=limits.max_pixels)
        sha = file_digest(path)
    except (UnsafeFile, BadImage) as exc:
        return _refuse(session, summary, reference, getattr(exc, "reason", "unreadable_image"), str(exc), origin)
    except OSError as exc:  # vanished or unreadable between the listing and now
        return _refuse(session, summary, reference, "unreadable_image", f"{reference}: {exc.strerror or exc}", origin)
    row = {"sha256": sha, "uri": reference, "width": image.width, "height": image.height,
           **{k: meta.get(k) for k in ("lat", "lon", "country_code", "city")}, "source": meta.get("source") or source}
    problems = row_problems(Image, row)
    row["origin"] = origin  # not a column: where to point the curator if the write is refused
    if problems:
        return _refuse(session, summary, reference, problems[0].reason, problems[0].message, origin)
    return row


def _relative(path: Path, root: Path | None) -> str | None:
    if root is None:
        return None
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _refuse(session: Session, summary: IngestSummary, reference: str, reason: str, detail: str, origin: str) -> None:
    summary.refuse(reason)
    quarantine(session, "image", reference, reason, detail=detail, source=origin)
    return None


def _flush(session: Session, pending: dict[str, dict[str, Any]], summary: IngestSummary) -> None:
    if not pending:
        return
    refused_rows: list[dict[str, Any]] = []

    def refused(row: dict[str, Any], exc: Exception) -> None:
        refused_rows.append(row)
        _refuse(session, summary, row["uri"], "write_failed", refusal(exc), row["origin"])

    rows = list(pending.values())
    added = write_isolated(session, rows, add_images, refused)
    summary.added += added
    summary.duplicates += len(rows) - added - len(refused_rows)
    pending.clear()
