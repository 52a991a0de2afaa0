"""Clue rows and clue–image pairs: idempotent inserts (a clue is one row per normalised-text hash, a pair one row
per clue and image) and the reads that pairing, review and export need."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from db.models import Clue, CluePair, Image, utcnow
from db.upsert import insert_ignore

CLUE_FIELDS = ("sha256", "text", "source", "country_hint", "image_ref", "image_id", "entities", "geo_ok", "country",
               "status", "reason")
USABLE_STATUSES = ("accepted",)  # what the reasoning export may train on (a human's "accepted" included)


def _chunks(items: list, size: int = 1000):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def existing_clue_shas(session: Session, shas: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(list(shas)):
        found.update(session.scalars(select(Clue.sha256).where(Clue.sha256.in_(chunk))))
    return found


def add_clues(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Insert clues, keeping the stored row when the same normalised text is already there. Returns rows added."""
    now = utcnow()
    prepared = ({**{f: row.get(f) for f in CLUE_FIELDS}, "entities": row.get("entities") or [], "created_at": now}
                for row in rows)
    return insert_ignore(session, Clue.__table__, prepared, conflict=["sha256"])


def clue_ids_by_sha(session: Session, shas: Iterable[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(list(shas)):
        found.update(session.execute(select(Clue.sha256, Clue.id).where(Clue.sha256.in_(chunk))).tuples().all())
    return found


def add_clue_pairs(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Insert (clue_id, image_id, method, similarity) pairs; an existing pair is kept. Returns pairs added."""
    return insert_ignore(session, CluePair.__table__, rows, conflict=["clue_id", "image_id"])


def set_clue_decision(session: Session, clue_id: int, status: str, reason: str | None = None,
                      country: str | None = None) -> None:
    """Record a decision taken after ingest (a human review label): status accepted/rejected, and the country."""
    values: dict[str, Any] = {"status": status}
    if reason is not None:
        values["reason"] = reason
    if country is not None:
        values["country"] = country
    session.execute(update(Clue).where(Clue.id == clue_id).values(**values))


def clues_with_status(session: Session, status: str) -> list[Clue]:
    return list(session.scalars(select(Clue).where(Clue.status == status).order_by(Clue.id)))


def unlinked_image_refs(session: Session) -> list[tuple[int, str]]:
    """(clue id, image reference) of clues given an image that was not in the store when they were ingested."""
    rows = session.execute(
        select(Clue.id, Clue.image_ref).where(Clue.image_ref.is_not(None), Clue.image_id.is_(None)).order_by(Clue.id)
    )
    return [tuple(row) for row in rows]


def link_clue_image(session: Session, clue_id: int, image_id: int) -> None:
    session.execute(update(Clue).where(Clue.id == clue_id).values(image_id=image_id))


def clues_needing_pairs(session: Session) -> list[tuple[int, str, str]]:
    """(id, text, country) of usable clues with a country, no image of their own and no pair yet."""
    paired = select(CluePair.clue_id)
    rows = session.execute(
        select(Clue.id, Clue.text, Clue.country)
        .where(Clue.status.in_(USABLE_STATUSES), Clue.country.is_not(None), Clue.image_id.is_(None),
               Clue.id.not_in(paired))
        .order_by(Clue.id)
    )
    return [tuple(row) for row in rows]


def accepted_clues_without_country(session: Session) -> list[int]:
    """Ids of usable clues with no image and no pair that have no country either: pairing has nowhere to look."""
    paired = select(CluePair.clue_id)
    return list(session.scalars(
        select(Clue.id).where(Clue.status.in_(USABLE_STATUSES), Clue.country.is_(None), Clue.image_id.is_(None),
                              Clue.id.not_in(paired)).order_by(Clue.id)
    ))


def pairable_images(session: Session, countries: Iterable[str]) -> dict[str, list[int]]:
    """Stored, non-quarantined image ids per country code."""
    codes = sorted(set(countries))
    by_country: dict[str, list[int]] = {code: [] for code in codes}
    for chunk in _chunks(codes):
        rows = session.execute(
            select(Image.country_code, Image.id)
            .where(and_(Image.country_code.in_(chunk), Image.status != "quarantined"))
            .order_by(Image.id)
        )
        for code, image_id in rows:
            by_country[code].append(image_id)
    return by_country


def reasoning_pairs(session: Session) -> list[tuple[Clue, CluePair]]:
    """Usable clues joined with their image pairs: what the reasoning export builds train.jsonl from."""
    rows = session.execute(
        select(Clue, CluePair).join(CluePair, CluePair.clue_id == Clue.id)
        .where(Clue.status.in_(USABLE_STATUSES)).order_by(Clue.id, CluePair.id)
    )
    return [tuple(row) for row in rows]
