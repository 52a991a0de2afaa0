"""Ingest: image files (and an optional metadata CSV) into the store, idempotently by content sha256.

Unreadable files, metadata rows with invalid coordinates or an unknown country code are quarantined with their
reason; everything else in the batch still goes in. Re-running on the same folder adds nothing.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from curation.scoring import BadImage, open_image
from db.images import add_images
from db.quarantine import quarantine

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
METADATA_COLUMNS = ("filename", "lat", "lon", "country_code", "city", "source")
CHUNK = 1000


@dataclass
class IngestSummary:
    added: int = 0
    duplicates: int = 0
    quarantined: int = 0


class MetadataError(ValueError):
    """A metadata row that cannot be trusted; the message names the column and the value."""


def discover_images(directory: Path | str) -> list[Path]:
    """Image files under `directory` (recursive), sorted, so every run sees the same order."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"image directory {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _known_country(code: str) -> bool:
    import pycountry

    return pycountry.countries.get(alpha_2=code) is not None


def _coordinate(raw: str | None, name: str, limit: float) -> float | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise MetadataError(f"{name} {raw!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise MetadataError(f"{name} {raw!r} is outside [-{limit:g}, {limit:g}]")
    return value


def parse_metadata_row(row: dict[str, str | None]) -> dict[str, Any]:
    """One validated row: lat and lon both present (or both absent) and in range, a known ISO 3166 alpha-2 code."""
    lat = _coordinate(row.get("lat"), "lat", 90)
    lon = _coordinate(row.get("lon"), "lon", 180)
    if (lat is None) != (lon is None):
        raise MetadataError("lat and lon must be given together")
    code = (row.get("country_code") or "").strip().upper() or None
    if code is not None and not _known_country(code):
        raise MetadataError(f"unknown country code {row.get('country_code')!r} (expected ISO 3166 alpha-2)")
    return {"lat": lat, "lon": lon, "country_code": code, "city": (row.get("city") or "").strip() or None,
            "source": (row.get("source") or "").strip() or None}


def read_metadata(csv_path: Path | str, session: Session | None = None) -> dict[str, dict[str, Any]]:
    """{filename: metadata} from a CSV with columns filename, lat, lon, country_code, city, source. A bad row is
    quarantined as `metadata` with reference `file:line` when a session is given, and its filename maps to
    {"rejected": reason} so that ingest_images quarantines the image instead of storing it without a location."""
    path = Path(csv_path)
    result: dict[str, dict[str, Any]] = {}
    rejected: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "filename" not in reader.fieldnames:
            raise ValueError(f"{path}: metadata CSV needs a header with a 'filename' column "
                             f"(columns: {', '.join(METADATA_COLUMNS)})")
        for row in reader:
            filename = (row.get("filename") or "").strip()
            try:
                if not filename:
                    raise MetadataError("filename is empty")
                result[filename] = parse_metadata_row(row)
            except MetadataError as exc:
                rejected[filename] = str(exc)
                result.pop(filename, None)
                if session is not None:
                    quarantine(session, "metadata", f"{path}:{reader.line_num}", f"invalid metadata: {exc}",
                               detail=str(dict(row)))
    for filename, reason in rejected.items():
        if filename:
            result[filename] = {"rejected": reason}
    return result


def file_sha256(path: Path) -> str:
    from curation.clip import file_digest

    return file_digest(path)


def ingest_images(session: Session, paths: list[Path], metadata: dict[str, dict[str, Any]] | None = None,
                  source: str | None = None, min_side: int | None = None) -> IngestSummary:
    """Add images in bulk; returns how many were added, already stored (same sha256) and quarantined. Metadata is
    matched by file name (or by the path as written in the CSV). An image whose metadata row was rejected is
    quarantined rather than stored without its location; an image without any metadata row is stored as is."""
    if min_side is None:
        from geocurate.settings import get_settings

        min_side = get_settings().min_image_side
    summary = IngestSummary()
    pending: dict[str, dict[str, Any]] = {}  # by sha256: one row per content in this batch
    for path in map(Path, paths):
        meta = (metadata or {}).get(path.name) or (metadata or {}).get(str(path)) or {}
        if "rejected" in meta:
            summary.quarantined += 1
            quarantine(session, "image", str(path), "metadata row rejected", detail=meta["rejected"])
            continue
        try:
            image = open_image(path, min_side)
            sha = file_sha256(path)
        except (BadImage, OSError) as exc:
            summary.quarantined += 1
            quarantine(session, "image", str(path), "unreadable or unusable image", detail=str(exc))
            continue
        row = {"sha256": sha, "uri": str(path.resolve()), "width": image.width, "height": image.height,
               **{k: meta.get(k) for k in ("lat", "lon", "country_code", "city")},
               "source": meta.get("source") or source}
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


def _flush(session: Session, pending: dict[str, dict[str, Any]], summary: IngestSummary) -> None:
    if pending:
        added = add_images(session, pending.values())
        summary.added += added
        summary.duplicates += len(pending) - added
        pending.clear()
