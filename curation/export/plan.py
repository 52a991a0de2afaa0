"""What an export would hold, without writing it: the selection's fingerprint, so that `geocurate run --export NAME`
can tell "this export already exists with exactly this content" (nothing to do) from "NAME exists with other
content" (refused, saying what changed) before building anything.

The fingerprint is a sha256 over the parameters that shape the files (`ExportParams.hashed`, resolved against the
store) and every input row the two selections read: each kept image's id, content hash, coordinates, country and city
(after review), and each accepted clue pair the reasoning stage would see. An export build is deterministic in these
(the near-duplicate search and the split deal are seeded), so the same fingerprint means the same content hash.
It is recorded on the export row when `run` builds it (`record_selection`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from curation.decisions import decided_images, kept_for_reasoning
from curation.export.params import ExportParams
from db import exports as store
from db.models import Export, Image


@dataclass(frozen=True)
class Selection:
    fingerprint: str
    parameters: dict[str, Any]
    kept_images: int  # images the location stage would select (before near-duplicate removal)
    clue_pairs: int  # accepted clue pairs the reasoning stage would consider (before val/test hold-out)

    def as_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "parameters": self.parameters, "kept_images": self.kept_images,
                "clue_pairs": self.clue_pairs}


def plan_selection(session: Session, params: ExportParams) -> Selection:
    """The selection `build_export(params)` would start from, read from the store (no file is written)."""
    resolved = params.resolved(session)
    parameters = resolved.hashed()
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode())
    kept = decided_images(resolved.scorer_version, resolved.threshold, lean=True,
                          exclude_pending=resolved.excluded_band).order_by(Image.id)
    kept_images = 0
    for row in store.stream_rows(session, kept):
        digest.update(repr(tuple(row)).encode())
        kept_images += 1
    digest.update(b"\0reasoning\0")
    clue_pairs = 0
    for row in store.stream_rows(session, store.accepted_clue_pairs().where(kept_for_reasoning())):
        digest.update(repr(tuple(row)).encode())
        clue_pairs += 1
    return Selection(digest.hexdigest(), parameters, kept_images, clue_pairs)


def record_selection(session: Session, export_id: int, selection: Selection) -> None:
    """Keep the selection an export was built from on its row, for the next run's comparison."""
    export = session.get(Export, export_id)
    if export is not None:
        export.selection = selection.as_json()


def compare(export: Export, selection: Selection) -> str | None:
    """None when `export` was built from this very selection; else what differs, in a curator's words."""
    recorded = export.selection or {}
    if recorded.get("fingerprint") == selection.fingerprint:
        return None
    if not recorded:
        return (f"export {export.name!r} was built without a recorded selection (by an older release), so its "
                "content cannot be compared")
    changes = []
    before, after = recorded.get("parameters", {}), selection.parameters
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            changes.append(f"{key} {_short(before.get(key))} -> {_short(after.get(key))}")
    for key, label in (("kept_images", "kept images"), ("clue_pairs", "clue pairs")):
        if recorded.get(key) != getattr(selection, key):
            changes.append(f"{label} {recorded.get(key)} -> {getattr(selection, key)}")
    if not changes:
        changes.append("the same counts, but other images, locations or review answers")
    splits = (export.counts or {}).get("location") or {}
    built = ", ".join(f"{split} {n}" for split, n in splits.items())
    return "; ".join(changes) + (f" (the existing export has location {built})" if built else "")


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if isinstance(value, str) and len(text) > 12 else text
