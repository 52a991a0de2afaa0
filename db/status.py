"""Counts for `geocurate status`: every table by state, plus queued work and the newest failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import models as m

# table -> the column that says what state a row is in (None: just count rows)
STATE_COLUMNS = {
    m.Image: m.Image.status,
    m.Score: m.Score.decision,
    m.Clue: m.Clue.status,
    m.ReviewTask: m.ReviewTask.state,
    m.Annotation: m.Annotation.label,
    m.Quarantine: m.Quarantine.item_kind,
    m.Export: m.Export.status,
    m.TrainingRun: m.TrainingRun.status,
    m.Run: m.Run.status,
    m.Batch: m.Batch.status,
    m.TaskFailure: None,
}


@dataclass
class StoreStatus:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantine: dict[tuple[str, str], int] = field(default_factory=dict)  # (item kind, reason) -> rows
    recent_runs: list[tuple[int, str, str, str, str]] = field(default_factory=list)  # (id, started, status, step, error)
    recent_failures: list[tuple[str, str, str]] = field(default_factory=list)  # (when, what, error)


def store_status(session: Session, failures: int = 5) -> StoreStatus:
    status = StoreStatus()
    for model, column in STATE_COLUMNS.items():
        table = model.__tablename__
        if column is None:
            total = session.scalar(select(func.count()).select_from(model)) or 0
            status.counts[table] = {"all": total}
        else:
            rows = session.execute(select(column, func.count()).group_by(column)).all()
            status.counts[table] = {str(state): n for state, n in rows}
    expired = session.scalar(
        select(func.count()).select_from(m.Batch).where(m.Batch.status == "claimed", m.Batch.lease_until < m.utcnow())
    )
    if expired:  # their worker died: the next reconcile re-queues them
        status.counts["batches"]["claimed"] -= expired
        status.counts["batches"]["claimed, lease expired"] = expired
    from db.quarantine import quarantine_counts

    status.quarantine = quarantine_counts(session)
    for run in session.scalars(select(m.Run).order_by(m.Run.id.desc()).limit(failures)):
        status.recent_runs.append((run.id, run.created_at.isoformat(timespec="seconds"), run.status, run.step,
                                   (run.error or "")[:300]))
    for f in session.scalars(select(m.TaskFailure).order_by(m.TaskFailure.id.desc()).limit(failures)):
        status.recent_failures.append((f.created_at.isoformat(timespec="seconds"), f.task_name, f.error[:200]))
    for b in session.scalars(
        select(m.Batch).where(m.Batch.status == "failed").order_by(m.Batch.updated_at.desc()).limit(failures)
    ):
        status.recent_failures.append(
            (b.updated_at.isoformat(timespec="seconds"), f"batch {b.run_id}/{b.step}/{b.seq}", (b.error or "")[:200])
        )
    return status
