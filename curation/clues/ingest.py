"""Loading clue files (JSONL or CSV: text, source, optional country, optional image path or sha256) into the store.

Every clue is kept with its decision and reason, rejected ones included; a malformed line is quarantined with its
file:line and reason and the rest of the file still loads. Clues are deduplicated by the hash of their normalised
text, so re-ingesting a file adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from curation.clues.assess import assess_clues
from curation.clues.gazetteer import Gazetteer
from geocurate.countries import country_code
from db.limits import column_length, text_problem
from db.models import Clue
from db.clues import (
    add_clue_pairs,
    add_clues,
    clue_ids_by_sha,
    existing_clue_shas,
    link_clue_image,
    unlinked_image_refs,
)
from db.images import ids_by_sha
from db.quarantine import quarantine
from db.upsert import refusal, write_isolated

CHUNK = 2000
MAX_TEXT_CHARS = 4000
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
IMAGE_KEYS = ("image", "image_path", "image_sha256", "image_ref")
TEXT_KEYS = ("text", "clue")


@dataclass
class ClueIngestSummary:
    accepted: int = 0
    rejected: int = 0
    review: int = 0
    duplicates: int = 0
    quarantined: int = 0
    images_linked: int = 0  # clues whose given image is in the store (a "given" clue_pairs row)
    quarantine_reasons: list[str] = field(default_factory=list)  # "file:line: reason", at most MAX_REASONS

    @property
    def added(self) -> int:
        return self.accepted + self.rejected + self.review

    def counts(self) -> dict[str, int]:
        return {"accepted": self.accepted, "rejected": self.rejected, "review": self.review,
                "duplicates": self.duplicates, "quarantined": self.quarantined, "images linked": self.images_linked}


MAX_REASONS = 20


def normalised_text(text: str) -> str:
    """What makes two clues the same: Unicode form, case, spacing and surrounding punctuation do not count."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .!?;:,\"'“”‘’")


def clue_sha256(text: str) -> str:
    return hashlib.sha256(normalised_text(text).encode("utf-8")).hexdigest()


class BadRecord(ValueError):
    """A line that cannot become a clue; `reason` is its quarantine code, the message says what exactly."""

    def __init__(self, message: str, reason: str = "invalid_value"):
        super().__init__(message)
        self.reason = reason


@dataclass
class RawClue:
    line: int
    text: str
    source: str | None
    country_hint: str | None
    image_ref: str | None


def _field(record: dict[str, Any], keys: tuple[str, ...], column: str, limit: int | None = None,
           one_line: bool = True) -> str | None:
    """The first non-empty of `keys` as a checked string. Numbers are accepted as their text (a CSV has only
    text; a JSON writer may emit a numeric source); objects, lists and booleans are not a clue's field."""
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadRecord(f"'{key}' must be a string, got {type(value).__name__}", "invalid_value")
        text = str(value).strip()
        if not text:
            continue
        problem = text_problem(key, text, limit if limit is not None else column_length(Clue, column), one_line)
        if problem:
            raise BadRecord(problem.message, problem.reason)
        return text
    return None


def parse_record(record: Any, line: int, default_source: str) -> RawClue:
    if not isinstance(record, dict):
        raise BadRecord(f"expected an object with a 'text' field, got {type(record).__name__}", "bad_json")
    text = _field(record, TEXT_KEYS, "text", MAX_TEXT_CHARS, one_line=False)
    if text is None:
        raise BadRecord("missing or empty 'text'", "missing_text")
    if "\ufffd" in text:
        raise BadRecord("text is not valid UTF-8", "bad_encoding")
    hint = _field(record, ("country", "country_code"), "text", 100)
    code = country_code(hint) if hint else None
    if hint and code is None:
        raise BadRecord(f"unknown country {hint!r}", "unknown_country")
    return RawClue(line, text, _field(record, ("source",), "source") or default_source[:200], code,
                   _field(record, IMAGE_KEYS, "image_ref"))


def _jsonl_records(path: Path, encoding: str | None = None) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode(encoding or "utf-8-sig"))
            except UnicodeDecodeError:
                yield number, BadRecord(f"line is not valid {encoding or 'UTF-8'}", "bad_encoding")
            except (json.JSONDecodeError, RecursionError) as exc:
                where = f": {exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ": too deep"
                yield number, BadRecord(f"invalid JSON{where}", "bad_json")


def _csv_records(path: Path, encoding: str | None = None) -> Iterator[tuple[int, Any]]:
    content = path.read_bytes().decode(encoding or "utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if not reader.fieldnames or not set(TEXT_KEYS) & {f.strip().lower() for f in reader.fieldnames}:
        raise ValueError(f"{path}: CSV header must have a 'text' column (found {reader.fieldnames})")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, BadRecord(f"malformed CSV: {exc}", "malformed_csv")
            continue
        if None in row:
            yield reader.line_num, BadRecord("more fields than the header", "malformed_csv")
            continue
        yield reader.line_num, {k.strip().lower(): v for k, v in row.items() if k}


def read_records(path: Path, encoding: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record or BadRecord) for a JSONL or CSV file (by extension; JSONL when unsure)."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_records(path, encoding)
    return _jsonl_records(path, encoding)


def _image_sha(ref: str, base: Path) -> str | None:
    """The content hash an image reference stands for: the ref itself, or the hash of the file it names (None
    when there is no such file yet: the clue is linked when the image arrives). BadRecord for a path that must
    not be read: a device or FIFO (`/dev/zero` would be hashed for ever), a directory."""
    if SHA256.match(ref):
        return ref.lower()
    from curation.files import UnsafeFile, check_readable, file_digest

    candidate = Path(ref) if Path(ref).is_absolute() else base / ref
    try:
        check_readable(candidate)
        return file_digest(candidate)
    except (UnsafeFile, OSError):
        return None


def _check_image_ref(ref: str | None, base: Path) -> None:
    """BadRecord for an image path that must never be read: a device or FIFO (`/dev/zero` would be hashed for
    ever), a directory. A path that does not exist yet is fine: the clue is linked when the image arrives."""
    if not ref or SHA256.match(ref):
        return
    from curation.files import UnsafeFile, check_readable

    candidate = Path(ref) if Path(ref).is_absolute() else base / ref
    if not os.path.lexists(candidate):
        return
    try:
        check_readable(candidate)
    except UnsafeFile as exc:
        if exc.reason != "unreadable_image":  # a broken link may be mended before the image is ingested
            raise BadRecord(f"image {exc}", "bad_image_ref") from None


def _resolve_images(session: Session, refs: dict[str, str | None]) -> dict[str, int]:
    """image reference → stored image id, for the references whose image is in the store."""
    shas = {ref: sha for ref, sha in refs.items() if sha}
    found = ids_by_sha(session, set(shas.values()))
    return {ref: found[sha] for ref, sha in shas.items() if sha in found}


def _store_chunk(session: Session, chunk: list[RawClue], gazetteer: Gazetteer, path: Path,
                 summary: ClueIngestSummary) -> None:
    base = path.parent
    by_sha: dict[str, RawClue] = {}
    for raw in chunk:
        sha = clue_sha256(raw.text)
        if sha in by_sha:
            summary.duplicates += 1
        else:
            by_sha[sha] = raw
    stored = existing_clue_shas(session, by_sha)
    summary.duplicates += len(stored)
    fresh = {sha: raw for sha, raw in by_sha.items() if sha not in stored}
    if not fresh:
        return
    refs = {raw.image_ref: _image_sha(raw.image_ref, base) for raw in fresh.values() if raw.image_ref}
    image_ids = _resolve_images(session, refs)
    assessments = assess_clues([r.text for r in fresh.values()], [r.country_hint for r in fresh.values()], gazetteer)
    rows = []
    for (sha, raw), verdict in zip(fresh.items(), assessments):
        rows.append(dict(
            sha256=sha, text=raw.text, source=raw.source, country_hint=raw.country_hint, image_ref=raw.image_ref,
            image_id=image_ids.get(raw.image_ref) if raw.image_ref else None,
            entities=[p.to_json() for p in verdict.places], geo_ok=verdict.geo_ok, country=verdict.country,
            status=verdict.decision, reason=verdict.reason,
        ))

    def refused(row: dict[str, Any], exc: Exception) -> None:
        _quarantine_line(session, path, fresh[row["sha256"]].line, BadRecord(refusal(exc), "write_failed"),
                         {"text": row["text"]}, summary)

    write_isolated(session, rows, add_clues, refused)
    ids = clue_ids_by_sha(session, [row["sha256"] for row in rows])
    for row in rows:
        if row["sha256"] in ids:  # not taken by a concurrent ingest of the same text
            setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
    pairs = [dict(clue_id=ids[row["sha256"]], image_id=row["image_id"], method="given", similarity=None)
             for row in rows if row["image_id"] and row["sha256"] in ids]
    summary.images_linked += add_clue_pairs(session, pairs)


def _quarantine_line(session: Session, path: Path, line: int, exc: BadRecord, record: Any,
                     summary: ClueIngestSummary) -> None:
    reference = f"{path}:{line}"
    detail = json.dumps(record)[:500] if isinstance(record, dict) else None
    quarantine(session, "clue", reference, exc.reason, detail=f"{exc}; line: {detail}" if detail else str(exc),
               source=str(path))
    summary.quarantined += 1
    if len(summary.quarantine_reasons) < MAX_REASONS:
        summary.quarantine_reasons.append(f"{reference}: {exc}")


def ingest_clues(session: Session, path: Path | str, gazetteer: Gazetteer, source: str | None = None,
                 encoding: str | None = None) -> ClueIngestSummary:
    """Load a clue file into the store (the caller's transaction). Raises FileNotFoundError / ValueError for a file
    that cannot be read at all; bad lines are quarantined instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clue file not found: {path}")
    summary = ClueIngestSummary()
    default_source = source or path.name
    chunk: list[RawClue] = []
    for line, record in read_records(path, encoding):
        try:
            if isinstance(record, BadRecord):
                raise record
            raw = parse_record(record, line, default_source)
            _check_image_ref(raw.image_ref, path.parent)
            chunk.append(raw)
        except BadRecord as exc:
            _quarantine_line(session, path, line, exc, record, summary)
            continue
        if len(chunk) >= CHUNK:
            _store_chunk(session, chunk, gazetteer, path, summary)
            chunk = []
    if chunk:
        _store_chunk(session, chunk, gazetteer, path, summary)
    return summary


def link_given_images(session: Session, base: Path | None = None) -> int:
    """Link clues whose given image reached the store after them; returns the "given" pairs added."""
    pending = unlinked_image_refs(session)
    base = base or Path.cwd()
    refs = {ref: _image_sha(ref, base) for _, ref in pending}
    image_ids = _resolve_images(session, refs)
    pairs = []
    for clue_id, ref in pending:
        if ref in image_ids:
            link_clue_image(session, clue_id, image_ids[ref])
            pairs.append(dict(clue_id=clue_id, image_id=image_ids[ref], method="given", similarity=None))
    return add_clue_pairs(session, pairs)
