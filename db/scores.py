"""Score rows: one per (image, scorer_version), so a re-run never scores twice."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from db.models import Score, ScorerVersion, utcnow
from db.upsert import insert_ignore


def add_scores(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Insert scores; an (image, scorer_version) pair already scored keeps its first row. Returns rows inserted."""
    now = utcnow()
    return insert_ignore(
        session, Score.__table__, ({"computed_at": now, **row} for row in rows), conflict=["image_id", "scorer_version"]
    )


def register_scorer_version(session: Session, version: str, params: dict[str, Any]) -> None:
    insert_ignore(session, ScorerVersion.__table__, [dict(version=version, params=params, created_at=utcnow())],
                  conflict=["version"])
