"""Pull annotations from Label Studio into the store and resolve each task's human decision.

Polling is the truth: a pull pages through every task of each review project and makes the store's annotations of
each task equal Label Studio's (new and edited ones upserted by annotation id, deleted ones removed). Webhooks
only make a pull of one task happen sooner. Each task is written in its own transaction, so a pull that dies
half-way leaves every task either fully synced or untouched, and the rerun completes the rest.

Several annotators resolve by majority; a tie leaves the task "conflicted" (still in review) while every
individual annotation is kept. With an overlap of N, a task is decided once N annotators have answered.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from db.engine import session_scope
from db.quarantine import quarantine
from db.review import AnnotationRecord, get_review_task, replace_annotations, review_snapshot, set_decision
from geocurate.settings import Settings
from labeling.client import call, make_client
from labeling.configs import INTERFACES, interface_for
from labeling.projects import find_project, iter_task_pages

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)


@dataclass
class PullSummary:
    tasks: int = 0
    annotations: int = 0  # annotations now stored for the pulled tasks
    deleted: int = 0  # stored annotations removed because Label Studio no longer has them
    changed: int = 0  # tasks whose decision changed
    done: int = 0
    conflicted: int = 0
    pending: int = 0
    retired: int = 0  # tasks retired under an older scorer version, still undecided (their answers kept)
    unchanged: int = 0  # tasks whose annotations and decision were already in the store (no write)
    unknown: int = 0  # tasks without a geocurate id or whose item is not in this store
    quarantined: int = 0  # annotations with a country nobody knows (kept, country left empty)

    def add(self, state: str) -> None:
        setattr(self, state, getattr(self, state) + 1)


def country_code(text: str) -> str | None:
    from geocurate.countries import country_code as lookup

    return lookup(text)


def _plain(annotation: Any) -> dict[str, Any]:
    if isinstance(annotation, dict):
        return annotation
    return annotation.model_dump(mode="json")


def annotator_of(annotation: dict[str, Any]) -> str | None:
    name = (annotation.get("created_username") or "").strip()
    if name:
        return name[:200]
    user = annotation.get("completed_by")
    user_id = user.get("id") if isinstance(user, dict) else user
    return None if user_id is None else f"user {user_id}"


def resolve(labels: Sequence[tuple[str | None, str | None]], overlap: int) -> tuple[str, str | None, str | None]:
    """(state, label, country) from each annotator's (label, country): majority wins once `overlap` annotators
    answered; a tie for first place is "conflicted". The country is the most common one among the annotators who
    chose the winning label (None on a tie or when nobody gave one)."""
    answered = [(label, country) for label, country in labels if label]
    if not answered or len(answered) < max(1, overlap):
        return "pending", None, None
    ranked = Counter(label for label, _ in answered).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "conflicted", None, None
    label = ranked[0][0]
    countries = Counter(country for chosen, country in answered if chosen == label and country).most_common()
    country = None
    if countries and (len(countries) == 1 or countries[0][1] > countries[1][1]):
        country = countries[0][0]
    return "done", label, country


def decision(labels: Sequence[tuple[str | None, str | None]], retired_by: str | None,
             settings: Settings) -> tuple[str, str | None, str | None]:
    """`resolve` under the project's overlap; a task retired under an older scorer version (labeling.retire) gets
    no further answers, so the answers it has decide it (majority of those), and without a decision it stays
    `retired` rather than going back to the open queue."""
    state, label, country = resolve(labels, settings.review_overlap)
    if retired_by is None or state == "done":
        return state, label, country
    state, label, country = resolve(labels, 1)
    return (state, label, country) if state == "done" else ("retired", None, None)


def sync_task(session_url: str, task: Any, settings: Settings, summary: PullSummary) -> None:
    """Make the store match one Label Studio task (one transaction)."""
    parsed = _parse_id(task)
    if parsed is None:
        summary.unknown += 1
        return
    kind, item = parsed
    geocurate_id = f"{kind}:{item}"
    interface = interface_for(kind)
    with session_scope(session_url) as session:
        # the geocurate id is the key: Label Studio on SQLite reuses the ids of deleted tasks
        review_task = get_review_task(session, kind, item)
        if review_task is None or review_task.ls_task_id not in (None, task.id):
            log.warning("Label Studio task %s (%s) is not the store's task for that item; left alone", task.id,
                        geocurate_id)
            summary.unknown += 1
            return
        if review_task.ls_task_id is None:
            review_task.ls_task_id = task.id  # pushed by a run that died before it could record the id
        records: list[AnnotationRecord] = []
        for annotation in answers_of(task):  # a skipped task (was_cancelled) is not an answer
            label, country_text = interface.read_result(annotation.get("result") or [])
            country = country_code(country_text) if country_text else None
            if country_text and country is None:
                summary.quarantined += quarantine(
                    session, "annotation", f"label-studio annotation {annotation['id']} ({geocurate_id})",
                    "unknown_country", country_text,
                )
            records.append(AnnotationRecord(
                ls_annotation_id=int(annotation["id"]), label=label, country=country,
                annotator=annotator_of(annotation), lead_time=annotation.get("lead_time"), payload=annotation,
            ))
        summary.deleted += replace_annotations(session, review_task.id, records)
        state, label, country = decision([(r.label, r.country) for r in records], review_task.retired_by, settings)
        summary.changed += set_decision(session, review_task, state, label, country)
    summary.tasks += 1
    summary.annotations += len(records)
    summary.add(state)


def _parse_id(task: Any) -> tuple[str, int] | None:
    kind, _, item = str((task.data or {}).get("geocurate_id") or "").partition(":")
    return (kind, int(item)) if kind in INTERFACES and item.isdigit() else None


def answers_of(task: Any) -> list[dict[str, Any]]:
    return [a for a in map(_plain, task.annotations or []) if not a.get("was_cancelled")]


def unchanged_tasks(session_url: str, page: list[Any], settings: Settings) -> dict[int, str]:
    """Label Studio task id → stored state, for the tasks of a page whose annotations (ids and last edits) the store
    already holds and whose decision is already resolved: the periodic sync then writes nothing for them."""
    by_kind: dict[str, dict[int, Any]] = {}
    for task in page:
        parsed = _parse_id(task)
        if parsed:
            by_kind.setdefault(parsed[0], {})[parsed[1]] = task
    unchanged: dict[int, str] = {}
    with session_scope(session_url) as session:
        for kind, tasks in by_kind.items():
            for item_id, (review_task, stored) in review_snapshot(session, kind, list(tasks)).items():
                task = tasks[item_id]
                if review_task.ls_task_id != task.id:
                    continue
                remote = sorted((int(a["id"]), a.get("updated_at")) for a in answers_of(task))
                local = sorted((a.ls_annotation_id, (a.payload or {}).get("updated_at")) for a in stored)
                resolved = decision([(a.label, a.country) for a in stored], review_task.retired_by, settings)
                if remote == local and resolved == (review_task.state, review_task.final_label,
                                                    review_task.final_country):
                    unchanged[task.id] = review_task.state
    return unchanged


def get_task(client: "LabelStudio", task_id: int, settings: Settings) -> Any | None:
    from label_studio_sdk.core.api_error import ApiError

    try:
        return client.tasks.get(str(task_id))
    except ApiError as exc:
        if exc.status_code == 404:
            return None
        raise


def pull_annotations(session_url: str, task_ids: Iterable[int] | None = None, *, settings: Settings) -> PullSummary:
    """Pull every review project of the Label Studio of `settings` (or only `task_ids`, the Label Studio task ids a
    webhook named) into the store at `session_url`."""
    client = make_client(settings)
    summary = PullSummary()
    if task_ids is not None:
        for task_id in task_ids:
            task = call(f"get task {task_id}", lambda: get_task(client, task_id, settings), settings)
            if task is None:
                log.warning("Label Studio task %s no longer exists; its store row is left as it is", task_id)
                summary.unknown += 1
                continue
            sync_task(session_url, task, settings, summary)
        return summary
    for interface in INTERFACES.values():
        project_id = find_project(client, interface, settings)
        if project_id is None:
            continue
        for page in iter_task_pages(client, project_id, settings):
            unchanged = unchanged_tasks(session_url, page, settings)
            for task in page:
                if task.id in unchanged:
                    summary.tasks += 1
                    summary.unchanged += 1
                    summary.add(unchanged[task.id])
                    summary.annotations += len(answers_of(task))
                else:
                    sync_task(session_url, task, settings, summary)
    return summary
