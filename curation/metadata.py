"""The metadata CSV (filename, lat, lon, country_code, city, source): read, validate, and match to the image files
of the ingested folder without guessing.

A row's filename is a path relative to the folder (`paris/x.jpg`; `./`, backslashes and an absolute path inside the
folder are accepted). A bare file name is accepted only when exactly one image in the folder has it. A bare name
shared by several images, a row for a file that is not there and a second row for the same file are quarantined
with their reason, never resolved by a guess: a wrong location is worse than none.
"""

from __future__ import annotations

import csv
import io
import math
import os
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.files import Discovery
from db.limits import column_length, text_problem
from db.models import Image
from geocurate.errors import UserError

METADATA_COLUMNS = ("filename", "lat", "lon", "country_code", "city", "source")
DEFAULT_ENCODING = "utf-8-sig"


class MetadataFileError(UserError):
    """The file as a whole cannot be read (missing, wrong encoding, no header): nothing of it is used."""


class MetadataError(ValueError):
    """A row that cannot be trusted; `reason` is its quarantine code, the message names the column and value."""

    def __init__(self, message: str, reason: str = "invalid_metadata"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MetadataRow:
    line: int
    filename: str
    values: dict[str, Any] | None  # None when the row was refused
    reason: str | None = None
    error: str | None = None
    raw: str = ""


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str
    message: str
    raw: str = ""


@dataclass
class MetadataMatch:
    """Which row belongs to which image (by path relative to the folder), and what could not be matched."""

    csv_path: Path
    root: Path  # the folder the relative paths start from
    rows: dict[str, MetadataRow] = field(default_factory=dict)  # relative path -> its row
    refused: dict[str, Problem] = field(default_factory=dict)  # relative path -> why its image is not stored
    problems: list[Problem] = field(default_factory=list)  # rows quarantined as metadata

    def source(self, line: int) -> str:
        return f"{self.csv_path}:{line}"

    def counts(self) -> dict[str, int]:
        counts = Counter(problem.reason for problem in self.problems)
        return {"rows_matched": sum(1 for row in self.rows.values() if row.values is not None), **counts}


def _known_country(code: str) -> bool:
    import pycountry

    return pycountry.countries.get(alpha_2=code) is not None


def _coordinate(raw: str | None, name: str, limit: float) -> float | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise MetadataError(f"{name} {raw[:40]!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise MetadataError(f"{name} {raw[:40]!r} is outside [-{limit:g}, {limit:g}]")
    return value


def _text(row: dict[str, str | None], name: str) -> str | None:
    value = (row.get(name) or "").strip() or None
    if value is not None:
        problem = text_problem(name, value, column_length(Image, name), one_line=True)
        if problem:
            raise MetadataError(problem.message, problem.reason)
    return value


def parse_metadata_row(row: dict[str, str | None]) -> dict[str, Any]:
    """One validated row: lat and lon both present (or both absent) and in range, a known ISO 3166 alpha-2 code,
    city and source that fit their columns."""
    if None in row:
        raise MetadataError("more fields than the header")
    lat = _coordinate(row.get("lat"), "lat", 90)
    lon = _coordinate(row.get("lon"), "lon", 180)
    if (lat is None) != (lon is None):
        raise MetadataError("lat and lon must be given together")
    raw_code = (row.get("country_code") or "").strip()
    code = raw_code.upper() or None
    if code is not None and (len(code) != 2 or not _known_country(code)):
        raise MetadataError(f"unknown country code {raw_code[:40]!r} (expected ISO 3166 alpha-2)", "unknown_country")
    return {"lat": lat, "lon": lon, "country_code": code, "city": _text(row, "city"), "source": _text(row, "source")}


def _decoded(path: Path, encoding: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MetadataFileError(f"metadata file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode(encoding)
    except LookupError:
        raise MetadataFileError(f"unknown encoding {encoding!r} for {path}") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise MetadataFileError(
            f"{path}:{line}: not valid {encoding} (byte 0x{data[exc.start]:02x} at column {column}); "
            "give the file's encoding with --encoding (e.g. --encoding latin-1)"
        ) from None


def read_metadata(csv_path: Path | str, encoding: str | None = None) -> list[MetadataRow]:
    """Every data row with its line number, parsed or with the reason it was refused. MetadataFileError when the
    file cannot be read at all (missing, not in `encoding`, no filename column)."""
    path = Path(csv_path)
    reader = csv.reader(io.StringIO(_decoded(path, encoding or DEFAULT_ENCODING), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        header = []
    except csv.Error as exc:
        raise MetadataFileError(f"{path}:1: malformed CSV header ({exc})") from None
    if "filename" not in header:
        raise MetadataFileError(f"{path}: metadata CSV needs a header with a 'filename' column "
                                f"(columns: {', '.join(METADATA_COLUMNS)})")
    rows: list[MetadataRow] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            rows.append(MetadataRow(reader.line_num, "", None, "malformed_csv", f"malformed CSV: {exc}"))
            continue
        if not any(cell.strip() for cell in cells):
            continue
        row: dict[str | None, Any] = dict(zip(header, cells))
        if len(cells) > len(header):
            row[None] = cells[len(header):]
        rows.append(_parsed(reader.line_num, row))


def _parsed(line: int, row: dict[str | None, Any]) -> MetadataRow:
    raw = ",".join(str(v) for k, v in row.items() if k is not None)[:500]
    filename = (row.get("filename") or "").strip()
    try:
        if not filename:
            raise MetadataError("filename is empty")
        problem = text_problem("filename", filename, None, one_line=True)
        if problem:
            raise MetadataError(problem.message, problem.reason)
        return MetadataRow(line, filename, parse_metadata_row(row), raw=raw)
    except MetadataError as exc:
        return MetadataRow(line, filename, None, exc.reason, str(exc), raw=raw)


def _relative_key(filename: str, root: Path) -> str | None:
    """The row's filename as a normalised path relative to the folder; None when it points outside."""
    name = filename.replace("\\", "/")
    if name.startswith("/"):
        relative = os.path.relpath(name, root)
        if relative.startswith(".."):
            return None
        name = Path(relative).as_posix()
    name = posixpath.normpath(name)
    return None if name.startswith("../") or name == ".." else name


def match_metadata(csv_path: Path | str, rows: list[MetadataRow], discovery: Discovery) -> MetadataMatch:
    """Assign rows to the folder's images (see the module docstring); every row ends matched or as a Problem."""
    match = MetadataMatch(Path(csv_path).absolute(), discovery.root)
    relative_paths = {discovery.relative(path) for path in discovery.files}
    by_basename: dict[str, list[str]] = defaultdict(list)
    for relative in sorted(relative_paths):
        by_basename[posixpath.basename(relative)].append(relative)
    for row in rows:
        if row.values is None and not row.filename:
            match.problems.append(Problem(row.line, row.reason or "invalid_metadata", row.error or "", row.raw))
            continue
        key = _relative_key(row.filename, discovery.root)
        target = key if key in relative_paths else None
        if target is None and key is not None and "/" not in key:
            candidates = by_basename.get(key, [])
            if len(candidates) > 1:
                shown = ", ".join(candidates[:5]) + (" ..." if len(candidates) > 5 else "")
                match.problems.append(Problem(row.line, "ambiguous_filename",
                                              f"{row.filename!r} names {len(candidates)} images ({shown}); "
                                              "write its path relative to the folder", row.raw))
                continue
            target = candidates[0] if candidates else None
        if row.values is None:
            match.problems.append(Problem(row.line, row.reason or "invalid_metadata", row.error or "", row.raw))
            if target is not None and target not in match.rows:
                match.rows[target] = row
                match.refused[target] = Problem(row.line, "metadata_rejected", f"line {row.line}: {row.error}")
            continue
        if target is None:
            match.problems.append(Problem(row.line, "missing_file",
                                          f"no image {row.filename!r} in {discovery.root}", row.raw))
            continue
        first = match.rows.get(target)
        if first is not None:
            same = first.values == row.values
            match.problems.append(Problem(
                row.line, "duplicate_row",
                f"a second row for {target} (first at line {first.line}"
                + (", same values; the first row counts)" if same else ", different values: the image is not stored)"),
                row.raw))
            if not same:
                match.refused[target] = Problem(row.line, "metadata_rejected",
                                                f"conflicting metadata rows at lines {first.line} and {row.line}")
            continue
        match.rows[target] = row
    return match


def quarantine_problems(session, match: MetadataMatch) -> int:
    """Record the match's refused rows once (re-running finds them recorded); returns how many are new."""
    from db.quarantine import quarantine

    added = 0
    for problem in match.problems:
        added += quarantine(session, "metadata", match.source(problem.line), problem.reason,
                            detail=f"{problem.message}; row: {problem.raw}" if problem.raw else problem.message,
                            source=str(match.csv_path))
    return added
