"""Review tasks and their annotations: the store's side of human review.

A review_tasks row is the review queue entry for one image or clue (unique per item, so routing twice queues once);
`ls_task_id` ties it to its Label Studio task so a push is never repeated. Annotations are upserted by their
Label Studio id, keeping every annotator's answer, and the task's final decision is resolved from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.models import Annotation, Clue, ReviewTask, utcnow
from db.upsert import insert_ignore, upsert

OPEN_STATES = ("pending", "conflicted")


@dataclass(frozen=True)
class AnnotationRecord:
    ls_annotation_id: int
    label: str | None
    country: str | None
    annotator: str | None
    lead_time: float | None
    payload: dict[str, Any]


def add_review_tasks(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Queue items for review; an item already queued keeps its row (and its Label Studio task), and an item whose
    task was retired without a human answer is queued again (`reopen_retired`). Returns rows queued."""
    now = utcnow()
    rows = list(rows)
    prepared = ({"state": "pending", "created_at": now, "updated_at": now, **row} for row in rows)
    added = insert_ignore(session, ReviewTask.__table__, prepared, conflict=["item_kind", "item_id"])
    return added + reopen_retired(session, rows)


def reopen_retired(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Rows routed again whose stored task was retired with no annotation (its Label Studio task was deleted) go
    back to the queue under the new routing (version, reason, priority), so an image in the new band is reviewed
    once more. A retired task with annotations stays as it is: its human answer decides the image."""
    wanted = {(row["item_kind"], row["item_id"]): row for row in rows}
    if not wanted:
        return 0
    reopened = 0
    annotated = select(Annotation.id).where(Annotation.review_task_id == ReviewTask.id).exists()
    for kind in {kind for kind, _ in wanted}:
        ids = [item for k, item in wanted if k == kind]
        for start in range(0, len(ids), 1000):
            for task in session.scalars(select(ReviewTask).where(
                    ReviewTask.item_kind == kind, ReviewTask.item_id.in_(ids[start:start + 1000]),
                    ReviewTask.state == "retired", ~annotated)):
                row = wanted[(kind, task.item_id)]
                task.state, task.ls_task_id, task.ls_project_id = "pending", None, None
                task.scorer_version, task.retired_by = row.get("scorer_version"), None
                task.reason, task.priority, task.updated_at = row.get("reason"), row.get("priority"), utcnow()
                task.final_label = task.final_country = None
                reopened += 1
    session.flush()
    return reopened


def stale_tasks(session: Session, current_version: str) -> list[ReviewTask]:
    """Pending image tasks routed under another scorer version than `current_version`: their band is not the
    current one, so they are retired (labeling.retire). Tasks with a human decision are not stale: the answer
    stands whatever version routed the image."""
    return list(session.scalars(
        select(ReviewTask).where(ReviewTask.item_kind == "image", ReviewTask.state == "pending",
                                 ReviewTask.scorer_version.is_not(None),
                                 ReviewTask.scorer_version != current_version)
        .order_by(ReviewTask.id)
    ))


def retire(session: Session, task: ReviewTask, by_version: str, note: str, keep_ls_task: bool) -> None:
    """Close a stale task in the store: state `retired`, the version that retired it, and why (appended to the
    reason). `keep_ls_task` False forgets its Label Studio id (the task was deleted there, and Label Studio on
    SQLite reuses the ids of deleted tasks)."""
    task.state, task.retired_by, task.updated_at = "retired", by_version, utcnow()
    task.reason = f"{task.reason or ''} [retired by scorer {by_version}: {note}]".strip()[:4000]
    if not keep_ls_task:
        task.ls_task_id = task.ls_project_id = None


def unpushed(session: Session, item_kind: str, limit: int | None = None) -> list[ReviewTask]:
    """Open review tasks not yet in Label Studio, most uncertain first."""
    stmt = (
        select(ReviewTask)
        .where(ReviewTask.item_kind == item_kind, ReviewTask.ls_task_id.is_(None), ReviewTask.state.in_(OPEN_STATES))
        .order_by(ReviewTask.priority.desc().nulls_last(), ReviewTask.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def set_ls_task(session: Session, review_task_id: int, ls_project_id: int, ls_task_id: int) -> None:
    session.execute(
        update(ReviewTask)
        .where(ReviewTask.id == review_task_id)
        .values(ls_project_id=ls_project_id, ls_task_id=ls_task_id, updated_at=utcnow())
    )


def by_ls_task(session: Session, ls_task_id: int) -> ReviewTask | None:
    return session.scalar(select(ReviewTask).where(ReviewTask.ls_task_id == ls_task_id))


def get_review_task(session: Session, item_kind: str, item_id: int) -> ReviewTask | None:
    return session.scalar(select(ReviewTask).where(ReviewTask.item_kind == item_kind, ReviewTask.item_id == item_id))


def review_snapshot(session: Session, item_kind: str, item_ids: Sequence[int]) -> dict[int, tuple[ReviewTask, list[Annotation]]]:
    """item id → (review task, its annotations), read in two queries for a whole page of Label Studio tasks."""
    tasks = {t.id: t for t in session.scalars(
        select(ReviewTask).where(ReviewTask.item_kind == item_kind, ReviewTask.item_id.in_(list(item_ids)))
    )}
    grouped: dict[int, list[Annotation]] = {task_id: [] for task_id in tasks}
    if tasks:
        for annotation in session.scalars(select(Annotation).where(Annotation.review_task_id.in_(list(tasks)))):
            grouped[annotation.review_task_id].append(annotation)
    return {t.item_id: (t, grouped[t.id]) for t in tasks.values()}


def annotations_of(session: Session, review_task_id: int) -> list[Annotation]:
    return list(session.scalars(
        select(Annotation).where(Annotation.review_task_id == review_task_id).order_by(Annotation.ls_annotation_id)
    ))


def replace_annotations(session: Session, review_task_id: int, records: Sequence[AnnotationRecord]) -> int:
    """Make the store's annotations of one task equal Label Studio's: upsert by annotation id (an edited
    annotation updates its row) and delete the ones Label Studio no longer has. Returns rows deleted."""
    now = utcnow()
    rows = [dict(ls_annotation_id=r.ls_annotation_id, review_task_id=review_task_id, label=r.label, country=r.country,
                 annotator=r.annotator, lead_time=r.lead_time, payload=r.payload, created_at=now, updated_at=now)
            for r in records]
    upsert(session, Annotation.__table__, rows, conflict=["ls_annotation_id"],
           update=["review_task_id", "label", "country", "annotator", "lead_time", "payload", "updated_at"])
    keep = [r.ls_annotation_id for r in records]
    stmt = delete(Annotation).where(Annotation.review_task_id == review_task_id)
    if keep:
        stmt = stmt.where(Annotation.ls_annotation_id.not_in(keep))
    return session.execute(stmt).rowcount or 0


def set_decision(session: Session, task: ReviewTask, state: str, label: str | None, country: str | None) -> bool:
    """Record the resolved decision; a clue's status follows it. Returns True when anything changed."""
    changed = (task.state, task.final_label, task.final_country) != (state, label, country)
    if changed:
        task.state, task.final_label, task.final_country, task.updated_at = state, label, country, utcnow()
    if task.item_kind == "clue":
        apply_clue_decision(session, task.item_id, label if state == "done" else None, country)
    return changed


def apply_clue_decision(session: Session, clue_id: int, label: str | None, country: str | None) -> None:
    """geo_clue accepts the clue (with the annotator's country when given), no_geo_clue rejects it; no decision
    (annotations deleted, or a tie) puts it back in review."""
    values: dict[str, Any]
    if label == "geo_clue":
        values = {"status": "accepted", "reason": "accepted in human review"}
        if country:
            values["country"] = country
    elif label == "no_geo_clue":
        values = {"status": "rejected", "reason": "rejected in human review: no geo clue"}
    else:
        values = {"status": "review"}
    session.execute(update(Clue).where(Clue.id == clue_id).values(**values))


def human_labels(session: Session, item_kind: str) -> dict[int, tuple[str, str | None]]:
    """Final human decisions of one kind: item id → (label, ISO alpha-2 country or None). Exports let these
    override the machine (an image labeled locatable is kept whatever its score)."""
    rows = session.execute(
        select(ReviewTask.item_id, ReviewTask.final_label, ReviewTask.final_country)
        .where(ReviewTask.item_kind == item_kind, ReviewTask.state == "done", ReviewTask.final_label.is_not(None))
    )
    return {item_id: (label, country) for item_id, label, country in rows}


def review_queue(session: Session, item_kind: str | None = None, states: Sequence[str] = OPEN_STATES,
                 limit: int | None = None) -> list[ReviewTask]:
    """The review queue, most uncertain first (the local queue when no Label Studio is configured)."""
    stmt = select(ReviewTask).where(ReviewTask.state.in_(list(states)))
    if item_kind:
        stmt = stmt.where(ReviewTask.item_kind == item_kind)
    stmt = stmt.order_by(ReviewTask.priority.desc().nulls_last(), ReviewTask.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def state_counts(session: Session) -> dict[str, dict[str, int]]:
    """{item_kind: {state: n}}; pushed/unpushed split is in the `pending_in_label_studio` pseudo-state."""
    counts: dict[str, dict[str, int]] = {}
    for kind, state, n in session.execute(
        select(ReviewTask.item_kind, ReviewTask.state, func.count()).group_by(ReviewTask.item_kind, ReviewTask.state)
    ):
        counts.setdefault(kind, {})[state] = n
    for kind, n in session.execute(
        select(ReviewTask.item_kind, func.count())
        .where(ReviewTask.state == "pending", ReviewTask.ls_task_id.is_not(None))
        .group_by(ReviewTask.item_kind)
    ):
        counts.setdefault(kind, {})["pending_in_label_studio"] = n
    return counts


def annotations_by_task(session: Session, item_kind: str) -> dict[int, list[Annotation]]:
    """Every annotation of one kind grouped by review task (agreement and time-per-task statistics)."""
    grouped: dict[int, list[Annotation]] = {}
    for annotation in session.scalars(
        select(Annotation).join(ReviewTask, ReviewTask.id == Annotation.review_task_id)
        .where(ReviewTask.item_kind == item_kind).order_by(Annotation.review_task_id, Annotation.ls_annotation_id)
    ):
        grouped.setdefault(annotation.review_task_id, []).append(annotation)
    return grouped


def queue_details(session: Session, tasks: Sequence[ReviewTask]) -> dict[int, tuple[str, str | None, float | None]]:
    """review task id → (image uri or clue text, country, score) for a page of the queue: what a reviewer working
    from `geocurate review list` needs to find the file and see why it is there. An image's score is the one under
    the version that routed it (the newest when the task does not say); its country the reviewer's, else the
    metadata's."""
    from db.models import Image, Score

    images = [t for t in tasks if t.item_kind == "image"]
    clues = [t for t in tasks if t.item_kind == "clue"]
    details: dict[int, tuple[str, str | None, float | None]] = {}
    if images:
        ids = [t.item_id for t in images]
        rows = {i.id: i for i in session.scalars(select(Image).where(Image.id.in_(ids)))}
        scores: dict[tuple[int, str], float] = {}
        newest: dict[int, float] = {}
        for score in session.scalars(select(Score).where(Score.image_id.in_(ids)).order_by(Score.computed_at)):
            scores[(score.image_id, score.scorer_version)] = score.locatability
            newest[score.image_id] = score.locatability
        for task in images:
            image = rows.get(task.item_id)
            score = scores.get((task.item_id, task.scorer_version or ""), newest.get(task.item_id))
            details[task.id] = (image.uri if image else "", task.final_country or (image.country_code if image else None),
                                score)
    if clues:
        found = {clue_id: (text, country) for clue_id, text, country in session.execute(
            select(Clue.id, Clue.text, Clue.country).where(Clue.id.in_([t.item_id for t in clues])))}
        for task in clues:
            text, country = found.get(task.item_id, ("", None))
            details[task.id] = (text, task.final_country or country, None)
    return details
