"""What a value must be for the store to keep it, checked before the write so that one bad value is quarantined
with its reason instead of rolling back its whole batch.

The limits are read from the models' column types (String(200) means 200 characters), so there is one place that
defines them: db/models.py. PostgreSQL refuses NUL in any text and stores no unpaired UTF-16 surrogate (what a
non-UTF-8 byte or an escaped `\\ud800` in JSON becomes in Python); SQLite would keep them and turn the problem into
a later one (an export that cannot be written, a label that cannot be sent). Both are refused everywhere."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String

from db.models import Base

SURROGATE = re.compile("[\ud800-\udfff]")
NUL = "\x00"
# One-line fields (names, codes, sources) must not carry control characters either: they end up in CSVs, logs,
# Label Studio and file names. Free texts (a clue) may hold tabs and newlines.
LINE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class FieldProblem:
    field: str
    reason: str  # a db.quarantine.REASONS code
    message: str

    def __str__(self) -> str:
        return self.message


class InvalidField(ValueError):
    """A value the store cannot keep; carries the quarantine reason code."""

    def __init__(self, problem: FieldProblem):
        super().__init__(problem.message)
        self.problem = problem
        self.reason = problem.reason


def column_length(model: type[Base], field: str) -> int | None:
    """The character limit of a bounded text column, None for unbounded ones."""
    column_type = model.__table__.c[field].type
    return column_type.length if isinstance(column_type, String) else None


def text_problem(name: str, value: str, limit: int | None, one_line: bool) -> FieldProblem | None:
    if SURROGATE.search(value):
        return FieldProblem(name, "bad_encoding", f"{name} holds an unpaired surrogate ({_shown(value)}): "
                                                  "not valid Unicode text")
    if NUL in value:
        return FieldProblem(name, "invalid_characters", f"{name} contains a NUL character ({_shown(value)})")
    if one_line and LINE_CONTROL.search(value):
        return FieldProblem(name, "invalid_characters", f"{name} contains control characters ({_shown(value)})")
    if limit is not None and len(value) > limit:
        return FieldProblem(name, "field_too_long", f"{name} is {len(value)} characters long; at most {limit} "
                                                    f"are kept ({_shown(value)})")
    return None


def row_problems(model: type[Base], row: dict[str, Any], free_text: tuple[str, ...] = ()) -> list[FieldProblem]:
    """Every text value of `row` checked against its column in `model`; `free_text` fields may span lines."""
    problems = []
    for field, value in row.items():
        if isinstance(value, str) and field in model.__table__.c:
            found = text_problem(field, value, column_length(model, field), one_line=field not in free_text)
            if found:
                problems.append(found)
    return problems


def check_row(model: type[Base], row: dict[str, Any], free_text: tuple[str, ...] = ()) -> None:
    """InvalidField for the first problem of the row."""
    problems = row_problems(model, row, free_text)
    if problems:
        raise InvalidField(problems[0])


def _shown(value: str, width: int = 40) -> str:
    shown = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return repr(shown[:width] + ("…" if len(shown) > width else ""))
