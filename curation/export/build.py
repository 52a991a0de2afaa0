"""build_export, the recipe: claim the name, place every kept image and deal places to splits, write the location
lines place by place with near-duplicates removed, then the reasoning lines, then the manifest. Files are written to
a hidden folder that is renamed into place when complete, so an export folder is always a whole one."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from curation.export import guard
from curation.export.location import write_location
from curation.export.manifest import freeze, write_manifest
from curation.export.params import ExportParams
from curation.export.placement import IMAGES_LISTING, ImagePlacer
from curation.export.readiness import check_built, check_trainable
from curation.export.reasoning import write_reasoning
from curation.export.selection import deal_places, pending_summary, places
from db import exports as store
from db.engine import session_scope
from geocurate.errors import UserError
from geocurate.export_format import SPLITS


@dataclass
class ExportResult:
    name: str
    path: Path
    content_hash: str
    counts: dict[str, Any]
    removed_duplicates: int
    export_id: int | None = None


def build_export(params: ExportParams, url: str) -> ExportResult:
    """Write export `params.name` into `params.out_dir` and record it in the store at `url`. Raises UserError for
    a taken name or a store without scores."""
    final_path = params.out_dir / params.name
    if final_path.exists():
        raise UserError(f"{final_path} already exists; exports are never overwritten, choose a new name")
    with session_scope(url) as session:
        params = params.resolved(session)  # scorer version, and its threshold and review band
        if params.train_stages:  # training is to follow: refuse an export it could not use, before writing
            check_trainable(session, params, params.train_stages)
        export_id, builder = guard.claim(session, params, final_path)

    partial = params.out_dir / f".{params.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # ours now: a build that held the name died
    partial.mkdir(parents=True)
    try:
        with guard.heartbeat(url, export_id, builder, params.heartbeat_seconds), session_scope(url) as session, \
                _old_objects_frozen():
            result = _write(session, export_id, params, partial)
            os.replace(partial, final_path)
            result.path = final_path
            freeze(final_path, params.images)
        return result
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        with session_scope(url) as session:
            store.fail_export(session, export_id)
        raise


@contextlib.contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """The passes allocate a few objects per image, millions in all, and every full pass of the cyclic garbage
    collector would walk all the objects the process held before (SQLAlchemy, numpy...): 13% of the exporter's CPU
    at 400k images. Those are set aside for the build (gc.freeze), unless the process froze objects of its own (a
    pre-fork server), whose choice is left alone."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _write(session: Session, export_id: int, params: ExportParams, root: Path) -> ExportResult:
    groups = store.create_group_table(session)
    placer = ImagePlacer(root, params.images)
    try:
        split_of, duplicates = deal_places(session, params, groups, placer.request_link if placer.linking else None)
        near_duplicates = duplicates.report(split_of)  # raises if a near-duplicate pair would cross splits
        location = write_location(session, export_id, params.name, root, placer,
                                  places(session, params, groups, split_of, duplicates))
        placer.wait()  # the reasoning pass may place the same images again: their links must exist first
        placer.remove_strays()
        reasoning, held_out = write_reasoning(session, export_id, params.name, root, placer, split_of,
                                              params.h3_resolution, duplicates.held_out(split_of))
        store.drop_group_table(session, groups)
    finally:
        placer.close()

    files = {f"location/{s}.jsonl": location.writers[s].close() for s in SPLITS}
    files["reasoning/train.jsonl"] = reasoning.close()
    files[IMAGES_LISTING] = placer.finish()
    counts = {
        "location": {s: location.writers[s].lines for s in SPLITS},
        "reasoning": {"train": reasoning.lines, "held_out": held_out},
        "images": placer.placed,
        "removed_duplicates": location.removed,
        "near_duplicates": near_duplicates,
        "places": {s: location.places[s] for s in SPLITS},
        "per_country": {s: dict(sorted(location.per_country[s].items())) for s in SPLITS},
        "pending_review": pending_summary(params, session),
    }
    if params.train_stages:
        check_built(session, params, counts, params.train_stages)
    content_hash = write_manifest(root, params.name, params.hashed(), counts, files, params.images, placer.placed)
    store.finish_export(session, export_id, counts, content_hash)
    return ExportResult(name=params.name, path=root, content_hash=content_hash, counts=counts,
                        removed_duplicates=location.removed, export_id=export_id)
