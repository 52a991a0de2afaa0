"""Quarantine: bad input is recorded with its reason, once, however often the same input is re-run.

`reason` is a short code from REASONS (what `geocurate status` counts and `geocurate quarantine list --reason`
filters on); `detail` says what exactly was wrong; `source` says where the item came from (`file:line` of a
metadata or clue line, the folder of an image) so a curator can go and fix it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Quarantine, utcnow
from db.upsert import insert_ignore

REASONS = {
    # images
    "unreadable_image": "the file cannot be decoded as an image (corrupt, truncated, not an image)",
    "too_small": "the image's shorter side is below GEOCURATE_MIN_IMAGE_SIDE",
    "too_large": "the image has more pixels than GEOCURATE_MAX_IMAGE_PIXELS (read from its header, never decoded)",
    "not_regular_file": "a device, FIFO, socket or directory where a file was expected (never read)",
    "outside_root": "a symlink pointing outside the ingested folder (GEOCURATE_ALLOW_OUTSIDE_ROOT allows it)",
    "metadata_rejected": "the image's metadata row was rejected, so it is not stored without its location",
    "scoring_failed": "the segmenter raised on this image while the other images of its batch scored",
    "missing_at_export": "the image file disappeared between ingest and export",
    # metadata rows
    "invalid_metadata": "a coordinate out of range, only one of lat/lon, or an unknown country code",
    "ambiguous_filename": "a bare file name that matches several images in the folder (write the relative path)",
    "missing_file": "a metadata row for a file that is not in the ingested folder",
    "duplicate_row": "a second metadata row for a file that already has one (the first row counts)",
    "unknown_country": "a country name or code that is not ISO 3166",
    # clue lines
    "bad_json": "a line that is not valid JSON, or not an object",
    "bad_encoding": "bytes that are not valid in the file's encoding, or an unpaired UTF-16 surrogate",
    "malformed_csv": "a CSV row that cannot be parsed, or has more fields than the header",
    "missing_text": "a clue without text",
    "bad_image_ref": "a clue's image is not a regular file, or lies outside the clue file's folder",
    # any field
    "field_too_long": "a value longer than its column allows (limits in db/limits.py)",
    "invalid_characters": "a value with NUL or other control characters the store cannot keep",
    "invalid_value": "a value of the wrong type or out of range",
    "write_failed": "the store refused the row; the rest of its batch was written without it",
    # review and training
    "not_sendable": "the item cannot be shown in Label Studio (image outside the served root, missing file)",
    "bad_training_example": "an export line the trainer cannot use",
}


def quarantine(session: Session, item_kind: str, reference: str, reason: str, detail: str | None = None,
               source: str | None = None) -> bool:
    """Record rejected input. Returns False when the same (kind, reference, reason) was already recorded."""
    fingerprint = hashlib.sha256(f"{item_kind}\0{reference}\0{reason}".encode("utf-8", "surrogatepass")).hexdigest()
    row = dict(
        fingerprint=fingerprint, item_kind=item_kind, reference=printable(reference), reason=reason,
        detail=None if detail is None else printable(detail)[:2000],
        source=None if source is None else printable(source), created_at=utcnow(),
    )
    return insert_ignore(session, Quarantine.__table__, [row], conflict=["fingerprint"]) == 1


def printable(text: str) -> str:
    """What the store can keep of any text: NUL and unpaired surrogates (a non-UTF-8 file name, an escaped
    `\\ud800` in JSON) become visible escapes instead of making the database refuse the whole row."""
    try:  # a file name's undecodable bytes (surrogate escapes) shown as the bytes they were: \xff
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other unpaired surrogates, shown as \ud800
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def quarantine_counts(session: Session) -> dict[tuple[str, str], int]:
    """(item kind, reason) → rows: what `geocurate status` shows."""
    rows = session.execute(
        select(Quarantine.item_kind, Quarantine.reason, func.count()).group_by(Quarantine.item_kind, Quarantine.reason)
    ).tuples()
    return {(kind, reason): n for kind, reason, n in rows}


def quarantine_rows(session: Session, kinds: Sequence[str] = (), reasons: Sequence[str] = (),
                    limit: int | None = 50) -> list[Quarantine]:
    """Newest first, optionally only some kinds and reasons."""
    stmt = select(Quarantine).order_by(Quarantine.id.desc())
    if kinds:
        stmt = stmt.where(Quarantine.item_kind.in_(list(kinds)))
    if reasons:
        stmt = stmt.where(Quarantine.reason.in_(list(reasons)))
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))
