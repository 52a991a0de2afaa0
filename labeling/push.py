"""Push the review queue to Label Studio: one task per queued item, with the machine's prediction.

Never twice: the store keeps each item's Label Studio task id, and before creating anything the push looks the
project's tasks up by geocurate id (`task.data.geocurate_id`), so tasks created by a push that died before it could
write their ids are adopted, not duplicated. Tasks are imported in chunks, each chunk's ids written in its own
transaction; an interrupted push leaves a consistent store and the rerun finishes it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import session_scope
from db.models import Clue, Image, ReviewTask, Score
from curation.decisions import rule_of
from curation.files import local_path
from curation.locatability import top_classes
from db.quarantine import quarantine
from db.review import set_ls_task, unpushed
from geocurate.settings import Settings
from labeling.client import call, make_client
from labeling.configs import INTERFACES, ReviewInterface, interface_for, span_results
from labeling.projects import ensure_local_storage, ensure_project, task_index

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

IMPORT_CHUNK = 500
LOCAL_FILES_PREFIX = "/data/local-files/?d="
REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://", "azure-blob://")


@dataclass
class PushSummary:
    created: int = 0
    reconciled: int = 0  # found in Label Studio by geocurate id and adopted, not created again
    quarantined: int = 0  # items that cannot be shown (image outside the served directory, item gone)
    projects: dict[str, int] = field(default_factory=dict)


def geocurate_id(kind: str, item_id: int) -> str:
    return f"{kind}:{item_id}"


def top_classes_text(class_ratios: dict[str, Any] | None) -> str:
    """The task's "top classes: road 41%, sky 30%" line (the classes the CLI names for the same score)."""
    parts = [f"{name} {ratio:.0%}" for name, ratio in top_classes(class_ratios)]
    return "top classes: " + (", ".join(parts) if parts else "none")


def image_url(uri: str, settings: Settings) -> str:
    """How the annotator's browser gets the image: a URL prefix (object storage/HTTP), Label Studio local-files
    serving under the image root, or the URI itself when it is already a URL. ValueError when none applies."""
    if uri.startswith(REMOTE_SCHEMES):
        return uri
    path = Path(local_path(uri))  # a non-UTF-8 name is percent-encoded byte for byte below
    root = settings.label_studio_image_root
    relative: str | None = None
    if root is not None:
        try:
            relative = path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            relative = None
    if settings.label_studio_image_url_prefix:
        return settings.label_studio_image_url_prefix.rstrip("/") + "/" + quote(os.fsencode(relative or path.name))
    if root is None:
        raise ValueError("neither GEOCURATE_LABEL_STUDIO_IMAGE_ROOT nor GEOCURATE_LABEL_STUDIO_IMAGE_URL_PREFIX is set")
    if relative is None:
        raise ValueError(f"image is not under GEOCURATE_LABEL_STUDIO_IMAGE_ROOT={root}")
    if "/" not in relative:
        raise ValueError(f"Label Studio serves local files only from subdirectories of its document root: move the "
                         f"image into a folder under GEOCURATE_LABEL_STUDIO_IMAGE_ROOT={root}")
    return LOCAL_FILES_PREFIX + quote(os.fsencode(relative))


def local_storage_dirs(tasks: list[dict], settings: Settings) -> set[str]:
    """The document root's top-level folders these tasks' images are served from (one storage each)."""
    root = Path(settings.label_studio_image_root or ".")
    dirs = set()
    for task in tasks:
        url = task["data"].get("image", "")
        if url.startswith(LOCAL_FILES_PREFIX):
            dirs.add(str(root / unquote(url[len(LOCAL_FILES_PREFIX):]).split("/")[0]))
    return dirs


def _latest_scores(session: Session, image_ids: list[int]) -> dict[int, Score]:
    latest: dict[int, Score] = {}
    for score in session.scalars(select(Score).where(Score.image_id.in_(image_ids)).order_by(Score.computed_at)):
        latest[score.image_id] = score  # newest wins
    return latest


def _routed_scores(session: Session, rows: list[ReviewTask]) -> dict[int, Score]:
    """Each image's score under the version that routed its task (the newest score where the task does not say):
    the task must show the score and threshold of the version whose band sent it to review."""
    scores = _latest_scores(session, [r.item_id for r in rows])
    by_version: dict[str, list[int]] = {}
    for row in rows:
        version = row.scorer_version
        if version and (row.item_id not in scores or scores[row.item_id].scorer_version != version):
            by_version.setdefault(version, []).append(row.item_id)
    for version, ids in by_version.items():
        for score in session.scalars(select(Score).where(Score.scorer_version == version, Score.image_id.in_(ids))):
            scores[score.image_id] = score
    return scores


def _threshold_of(session: Session, version: str, settings: Settings, cache: dict[str, float]) -> float:
    """The keep threshold stored with `version`; the settings' for a version that recorded none."""
    if version not in cache:
        try:
            cache[version] = rule_of(session, version).threshold
        except LookupError:
            cache[version] = settings.threshold
    return cache[version]


def image_tasks(session: Session, rows: list[ReviewTask], settings: Settings) -> tuple[list[dict], list[tuple[ReviewTask, str]]]:
    """Label Studio tasks for image review rows, and the rows that cannot be shown with the reason."""
    interface = interface_for("image")
    ids = [r.item_id for r in rows]
    images = {i.id: i for i in session.scalars(select(Image).where(Image.id.in_(ids)))}
    scores = _routed_scores(session, rows)
    thresholds: dict[str, float] = {}
    tasks, bad = [], []
    for row in rows:
        image, score = images.get(row.item_id), scores.get(row.item_id)
        if image is None or score is None:
            bad.append((row, "image or its score is no longer in the store"))
            continue
        try:
            url = image_url(image.uri, settings)
        except ValueError as exc:
            bad.append((row, str(exc)))
            continue
        threshold = _threshold_of(session, score.scorer_version, settings, thresholds)
        machine_label = "locatable" if score.locatability >= threshold else "not_locatable"
        result = [interface.choice_result(machine_label)]
        if image.country_code:
            result.append(interface.country_result(image.country_code))
        tasks.append({
            "data": {
                "image": url,
                "geocurate_id": geocurate_id("image", image.id),
                "sha256": image.sha256,
                "machine_score": f"machine locatability {score.locatability:.3f} (kept at ≥ {threshold:g}); "
                                 f"metadata country: {image.country_code or 'unknown'}",
                "top_classes": top_classes_text(score.class_ratios),
            },
            "predictions": [{"model_version": score.scorer_version, "score": row.priority or 0.0, "result": result}],
        })
    return tasks, bad


def clue_tasks(session: Session, rows: list[ReviewTask], settings: Settings) -> tuple[list[dict], list[tuple[ReviewTask, str]]]:
    interface = interface_for("clue")
    clues = {c.id: c for c in session.scalars(select(Clue).where(Clue.id.in_([r.item_id for r in rows])))}
    tasks, bad = [], []
    for row in rows:
        clue = clues.get(row.item_id)
        if clue is None:
            bad.append((row, "clue is no longer in the store"))
            continue
        result = [interface.choice_result("geo_clue" if clue.geo_ok else "no_geo_clue")]
        result += span_results(interface, clue.text, clue.entities)
        if clue.country:
            result.append(interface.country_result(clue.country))
        tasks.append({
            "data": {"clue": clue.text, "geocurate_id": geocurate_id("clue", clue.id), "source": clue.source or ""},
            "predictions": [{"model_version": "clues", "score": row.priority or 0.0, "result": result}],
        })
    return tasks, bad


BUILDERS = {"image": image_tasks, "clue": clue_tasks}


def _record_ids(session_url: str, project_id: int, pairs: list[tuple[int, int]]) -> None:
    """(review task id, Label Studio task id) pairs, written in one transaction."""
    with session_scope(session_url) as session:
        for review_task_id, ls_task_id in pairs:
            set_ls_task(session, review_task_id, project_id, ls_task_id)


def _import_chunk(client: "LabelStudio", project_id: int, chunk: list[tuple[int, dict]], session_url: str,
                  settings: Settings) -> tuple[int, int]:
    """Import one chunk; before each retry, adopt the tasks a failed attempt may have created anyway (a timeout
    does not mean nothing was imported). Returns (created, adopted)."""
    todo = list(chunk)
    adopted = 0

    def before_retry() -> None:
        nonlocal todo, adopted
        index = task_index(client, project_id, settings)
        found = [(rid, index[t["data"]["geocurate_id"]]) for rid, t in todo if t["data"]["geocurate_id"] in index]
        if found:
            _record_ids(session_url, project_id, found)
            adopted += len(found)
            done = {rid for rid, _ in found}
            todo = [(rid, t) for rid, t in todo if rid not in done]

    def attempt() -> list[int]:
        if not todo:
            return []
        response = client.projects.import_tasks(id=project_id, request=[t for _, t in todo], return_task_ids=True)
        ids = list(response.task_ids or [])
        if len(ids) != len(todo):
            raise RuntimeError(f"Label Studio returned {len(ids)} task ids for {len(todo)} imported tasks")
        return ids

    ids = call(f"import {len(todo)} tasks", attempt, settings, before_retry=before_retry)
    _record_ids(session_url, project_id, [(rid, ls_id) for (rid, _), ls_id in zip(todo, ids)])
    return len(ids), adopted


def push_kind(client: "LabelStudio", interface: ReviewInterface, session_url: str, limit: int | None,
              settings: Settings, summary: PushSummary, chunk_size: int) -> None:
    with session_scope(session_url) as session:
        rows = unpushed(session, interface.kind, limit)
    if not rows:
        return
    project_id = ensure_project(client, interface, settings)
    summary.projects[interface.kind] = project_id
    existing = task_index(client, project_id, settings)
    adopted = [(r.id, existing[geocurate_id(r.item_kind, r.item_id)]) for r in rows
               if geocurate_id(r.item_kind, r.item_id) in existing]
    if adopted:
        _record_ids(session_url, project_id, adopted)
        summary.reconciled += len(adopted)
    adopted_ids = {rid for rid, _ in adopted}
    rows = [r for r in rows if r.id not in adopted_ids]
    storages: set[str] = set()
    for start in range(0, len(rows), chunk_size):
        batch = rows[start : start + chunk_size]
        with session_scope(session_url) as session:
            tasks, bad = BUILDERS[interface.kind](session, batch, settings)
            for row, reason in bad:
                quarantine(session, interface.kind, geocurate_id(row.item_kind, row.item_id),
                           "not_sendable", reason)
        summary.quarantined += len(bad)
        bad_ids = {row.id for row, _ in bad}
        chunk = list(zip([r.id for r in batch if r.id not in bad_ids], tasks))
        for directory in sorted(local_storage_dirs(tasks, settings) - storages):
            ensure_local_storage(client, project_id, directory, settings)
            storages.add(directory)
        if chunk:
            created, late_adopted = _import_chunk(client, project_id, chunk, session_url, settings)
            summary.created += created
            summary.reconciled += late_adopted


def push_tasks(session_url: str, kind: str | None = None, limit: int | None = None, *, settings: Settings,
               chunk_size: int = IMPORT_CHUNK) -> PushSummary:
    """Send queued review items (all kinds, or `kind` = "image"/"clue") of the store at `session_url` to the Label
    Studio of `settings`, at most `limit` per kind, most uncertain first."""
    kinds = [interface_for(kind).kind] if kind else list(INTERFACES)
    client = make_client(settings)
    summary = PushSummary()
    for name in kinds:
        push_kind(client, INTERFACES[name], session_url, limit, settings, summary, chunk_size)
    return summary
