"""Retire review tasks routed under another scorer version than the current one.

A threshold, band or weights change makes a new scorer version with its own review band; a task still pending from
the old band asks a reviewer about an image the current version may not doubt at all, so it is closed. In Label
Studio an unannotated task is deleted (nobody should spend time on it); an annotated one is kept and flagged
(`meta.geocurate_retired_by`, and a `geocurate_retired` data field the Data Manager shows as a column), because a
human answer is never thrown away: it is pulled into the store first and decides the image whatever version routed
it (labeling.pull.decision). The store is written task by task after Label Studio, so a retirement that dies half-way
is finished by the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from db.engine import session_scope
from db.models import ReviewTask
from db.review import retire, stale_tasks
from geocurate.settings import Settings
from labeling.client import call, make_client
from labeling.pull import PullSummary, answers_of, get_task, sync_task

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

RETIRED_FIELD = "geocurate_retired"  # data field: visible as a column in Label Studio's Data Manager
RETIRED_META = "geocurate_retired_by"  # meta field: the scorer version that retired the task


@dataclass
class RetireSummary:
    retired: int = 0  # stale tasks closed in the store
    deleted: int = 0  # unannotated Label Studio tasks deleted
    kept_annotated: int = 0  # annotated Label Studio tasks kept and flagged, their answers pulled
    decided_by_answer: int = 0  # of those, tasks whose human answer now decides the image


def retire_stale_tasks(session_url: str, current_version: str, *, settings: Settings) -> RetireSummary:
    """Close every pending image task of the store at `session_url` routed under another scorer version than
    `current_version` (see the module docstring for what happens in Label Studio)."""
    with session_scope(session_url) as session:
        stale = [(t.id, t.ls_task_id) for t in stale_tasks(session, current_version)]
    summary = RetireSummary()
    if not stale:
        return summary
    client = make_client(settings) if settings.label_studio_url and any(ls for _, ls in stale) else None
    for task_id, ls_task_id in stale:
        if ls_task_id is None or client is None:
            note = ("never sent to Label Studio" if ls_task_id is None
                    else f"Label Studio not configured here; its task {ls_task_id} was left there")
            _close(session_url, task_id, current_version, note, keep_ls_task=ls_task_id is not None)
            summary.retired += 1
            continue
        remote = call(f"get task {ls_task_id}", lambda: get_task(client, ls_task_id, settings), settings)
        if remote is not None and answers_of(remote):
            decided = _keep_answered(client, session_url, task_id, remote, current_version, settings)
            summary.kept_annotated += 1
            summary.decided_by_answer += decided
            summary.retired += 1
            continue
        if remote is not None:
            call(f"delete task {ls_task_id}", lambda: client.tasks.delete(id=str(ls_task_id)), settings)
            summary.deleted += 1
        _close(session_url, task_id, current_version,
               f"unannotated Label Studio task {ls_task_id} deleted" if remote is not None
               else f"Label Studio task {ls_task_id} was already gone", keep_ls_task=False)
        summary.retired += 1
    return summary


def _close(session_url: str, task_id: int, version: str, note: str, keep_ls_task: bool) -> None:
    with session_scope(session_url) as session:
        task = session.get(ReviewTask, task_id)
        if task is not None and task.state == "pending":
            retire(session, task, version, note, keep_ls_task)


def _keep_answered(client: "LabelStudio", session_url: str, task_id: int, remote: Any, version: str,
                   settings: Settings) -> bool:
    """Mark the task retired, pull its answers (which then decide it, labeling.pull.decision), flag it in Label
    Studio. Returns True when the answers decide the image."""
    with session_scope(session_url) as session:
        task = session.get(ReviewTask, task_id)
        task.retired_by = version
        task.reason = f"{task.reason or ''} [retired by scorer {version}: annotated, kept in Label Studio]".strip()
    sync_task(session_url, remote, settings, PullSummary())
    flag(client, remote, version, settings)
    with session_scope(session_url) as session:
        return session.get(ReviewTask, task_id).state == "done"


def flag(client: "LabelStudio", remote: Any, version: str, settings: Settings) -> None:
    """Label the kept task as retired where annotators and managers see it; its annotations are untouched."""
    data = {**(remote.data or {}), RETIRED_FIELD: f"retired by scorer {version}: no more answers needed"}
    meta = {**(getattr(remote, "meta", None) or {}), RETIRED_META: version}
    call(f"flag task {remote.id}", lambda: client.tasks.update(id=str(remote.id), data=data, meta=meta), settings)
