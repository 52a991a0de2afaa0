"""Image rows: bulk, idempotent insertion by content hash."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Image, utcnow
from db.upsert import insert_ignore

IMAGE_FIELDS = ("sha256", "uri", "width", "height", "lat", "lon", "country_code", "city", "source")


def add_images(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Insert images, skipping any whose sha256 is already stored. Returns how many were new."""
    now = utcnow()
    prepared = (
        {**{field: row.get(field) for field in IMAGE_FIELDS}, "status": row.get("status", "ingested"), "ingested_at": now}
        for row in rows
    )
    return insert_ignore(session, Image.__table__, prepared, conflict=["sha256"])


def ids_by_sha(session: Session, shas: Iterable[str]) -> dict[str, int]:
    shas = list(shas)
    found: dict[str, int] = {}
    for start in range(0, len(shas), 1000):
        chunk = shas[start : start + 1000]
        found.update(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).tuples().all())
    return found


def set_status(session: Session, image_ids: Iterable[int], status: str) -> None:
    ids = list(image_ids)
    for start in range(0, len(ids), 1000):
        session.execute(update(Image).where(Image.id.in_(ids[start : start + 1000])).values(status=status))


def ingested_image_ids(session: Session) -> list[int]:
    """Images ingested and not yet scored (by any scorer) or quarantined: what the score step plans its batches from.
    Which images lack a score under one scorer version is db.scores.unscored_image_ids."""
    return list(session.scalars(select(Image.id).where(Image.status == "ingested").order_by(Image.id)))
