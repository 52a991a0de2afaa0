"""Quarantine: bad input is recorded with its reason, once, however often the same input is re-run."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from db.models import Quarantine, utcnow
from db.upsert import insert_ignore


def quarantine(session: Session, item_kind: str, reference: str, reason: str, detail: str | None = None) -> bool:
    """Record rejected input. Returns False when the same (kind, reference, reason) was already recorded."""
    fingerprint = hashlib.sha256(f"{item_kind}\0{reference}\0{reason}".encode()).hexdigest()
    row = dict(
        fingerprint=fingerprint, item_kind=item_kind, reference=reference, reason=reason, detail=detail,
        created_at=utcnow(),
    )
    return insert_ignore(session, Quarantine.__table__, [row], conflict=["fingerprint"]) == 1
