"""Runs and their batches: the store, not the broker, knows what work exists, who holds it and until when.

A batch is claimed with a lease by one conditional UPDATE, so two deliveries of the same message (a redelivery, a
reconcile re-send, a retry) cannot both work on it. The step function's writes and the batch's `done` mark are
committed in one transaction by the caller, so a worker that dies mid-batch leaves either both or neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Batch, Run, TaskFailure, TrainingRun, utcnow
from db.upsert import insert_ignore

OPEN = ("queued", "claimed")
# runs the same submission picks up again: stopped by Ctrl-C, stopped waiting for review, or running (when the
# process doing it in-process is gone)
RESUMABLE = ("interrupted", "waiting", "running")


@dataclass(frozen=True)
class Claim:
    batch_id: int
    run_id: int
    step: str
    seq: int
    payload: dict[str, Any]
    worker: str


def create_run(session: Session, steps: Sequence[str], params: dict[str, Any], kind: str = "pipeline") -> int:
    run = Run(kind=kind, params={**params, "steps": list(steps)}, step=steps[0], status="running", created_at=utcnow())
    session.add(run)
    session.flush()
    return run.id


def add_batches(session: Session, run_id: int, step: str, payloads: Iterable[dict[str, Any]]) -> list[int]:
    """Create the step's batches (idempotent per (run, step, seq)); returns their ids in seq order."""
    now = utcnow()
    rows = [
        dict(run_id=run_id, step=step, seq=seq, payload=payload, status="queued", attempts=0, updated_at=now)
        for seq, payload in enumerate(payloads)
    ]
    insert_ignore(session, Batch.__table__, rows, conflict=["run_id", "step", "seq"])
    return list(session.scalars(select(Batch.id).where(Batch.run_id == run_id, Batch.step == step).order_by(Batch.seq)))


def claim(session: Session, batch_id: int, worker: str, lease_seconds: float, now: datetime | None = None) -> Claim | None:
    """Take the batch if it is queued or its holder's lease ran out; None when someone else holds it or it is over."""
    now = now or utcnow()
    taken = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            or_(Batch.status == "queued", and_(Batch.status == "claimed", Batch.lease_until < now)),
        )
        .values(status="claimed", claimed_by=worker, lease_until=now + timedelta(seconds=lease_seconds),
                attempts=Batch.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        return None
    batch = session.execute(select(Batch.run_id, Batch.step, Batch.seq, Batch.payload).where(Batch.id == batch_id)).one()
    return Claim(batch_id, batch.run_id, batch.step, batch.seq, batch.payload, worker)


def take_over(session: Session, batch_id: int, dead_worker: str, worker: str, lease_seconds: float) -> Claim | None:
    """Claim a batch held by a worker known to be dead (same host, process gone) without waiting for its lease."""
    now = utcnow()
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "claimed", Batch.claimed_by == dead_worker)
        .values(lease_until=now - timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
    return claim(session, batch_id, worker, lease_seconds, now)


def holder(session: Session, batch_id: int) -> tuple[str, str | None] | None:
    row = session.execute(select(Batch.status, Batch.claimed_by).where(Batch.id == batch_id)).one_or_none()
    return None if row is None else (row.status, row.claimed_by)


def finish(session: Session, claim_: Claim, result: dict[str, Any]) -> bool:
    """Mark the batch done, only if this worker still holds it (its lease may have been taken over)."""
    return _close(session, claim_, "done", result=result, error=None)


def fail(session: Session, claim_: Claim, error: str) -> bool:
    return _close(session, claim_, "failed", result=None, error=error[:4000])


def release(session: Session, claim_: Claim) -> bool:
    """Give the batch back (graceful shutdown, transient error) so the next delivery claims it at once."""
    return _close(session, claim_, "queued", result=None, error=None, lease_until=None, claimed_by=None)


def _close(session: Session, claim_: Claim, status: str, **values: Any) -> bool:
    changed = session.execute(
        update(Batch)
        .where(Batch.id == claim_.batch_id, Batch.status == "claimed", Batch.claimed_by == claim_.worker)
        .values(status=status, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def requeue_expired(session: Session, now: datetime | None = None) -> list[tuple[int, str]]:
    """Claims whose lease ran out go back to `queued`; returns (batch id, step) to send again."""
    now = now or utcnow()
    expired = list(
        session.execute(
            select(Batch.id, Batch.step).where(Batch.status == "claimed", Batch.lease_until < now).order_by(Batch.id)
        ).tuples()
    )
    if expired:
        session.execute(
            update(Batch)
            .where(Batch.id.in_([i for i, _ in expired]), Batch.status == "claimed", Batch.lease_until < now)
            .values(status="queued", claimed_by=None, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    return expired


def stale_queued(session: Session, older_than_seconds: float, now: datetime | None = None) -> list[tuple[int, str]]:
    """Queued batches untouched for a long time: their message was probably lost (broker restart); send again."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
    rows = session.execute(
        select(Batch.id, Batch.step).where(Batch.status == "queued", Batch.updated_at < cutoff).order_by(Batch.id)
    ).tuples()
    return list(rows)


def touch(session: Session, batch_ids: Iterable[int]) -> None:
    ids = list(batch_ids)
    if ids:
        session.execute(
            update(Batch).where(Batch.id.in_(ids), Batch.status == "queued").values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def step_counts(session: Session, run_id: int, step: str) -> dict[str, int]:
    rows = session.execute(
        select(Batch.status, func.count()).where(Batch.run_id == run_id, Batch.step == step).group_by(Batch.status)
    ).tuples()
    return {status: count for status, count in rows}


def step_results(session: Session, run_id: int, step: str) -> list[dict[str, Any]]:
    return [r or {} for r in session.scalars(
        select(Batch.result).where(Batch.run_id == run_id, Batch.step == step, Batch.status == "done")
    )]


def advance(session: Session, run_id: int, from_step: str, to_step: str) -> bool:
    """Move the run to its next step; only one caller wins, however many batches finish at once. A run that
    reaches the end with failed batches (of steps it could go on without) ends `partial`, never `done`: "done"
    means every item was processed or quarantined."""
    values: dict[str, Any] = {"step": to_step}
    if to_step == "done":
        failed = failed_batches(session, run_id)
        values.update(status="partial" if failed else "done", finished_at=utcnow())
        if failed:
            values["error"] = describe_failures(failed)[:4000]
    changed = session.execute(
        update(Run).where(Run.id == run_id, Run.step == from_step, Run.status == "running").values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def fail_run(session: Session, run_id: int, error: str) -> None:
    session.execute(
        update(Run).where(Run.id == run_id, Run.status == "running")
        .values(status="failed", error=error[:4000], finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def failed_batches(session: Session, run_id: int) -> list[Batch]:
    return list(session.scalars(
        select(Batch).where(Batch.run_id == run_id, Batch.status == "failed").order_by(Batch.step, Batch.seq)
    ))


def batch_items(payload: dict[str, Any]) -> list[str]:
    """What a batch was about, as a user names it: image paths, image ids, the clue file, the export."""
    if payload.get("paths"):
        return [str(p) for p in payload["paths"]]
    if payload.get("image_ids"):
        return [f"image {i}" for i in payload["image_ids"]]
    for key in ("clues", "name", "stage"):
        if payload.get(key):
            return [f"{key} {payload[key]}"]
    if payload.get("converge"):
        return ["carrying scores over to the current scorer version"]
    return ["the whole folder" if payload.get("folder") else "clue pairing" if payload.get("pair_clues") else "-"]


def describe_failures(failed: Sequence[Batch], shown: int = 3) -> str:
    by_step: dict[str, list[Batch]] = {}
    for batch in failed:
        by_step.setdefault(batch.step, []).append(batch)
    parts = []
    for step, rows in by_step.items():
        items = sum(len(batch_items(b.payload)) for b in rows)
        parts.append(f"step {step}: {len(rows)} batch(es) failed ({items} item(s)), first: {(rows[0].error or '')[:200]}")
    return "; ".join(parts)


def hold(session: Session, run_id: int, step: str, error: str) -> bool:
    """A running run held after `step` stops waiting (status `waiting`, resumable like an interrupted run); only
    while it is still there: False when another process moved it on meanwhile."""
    return session.execute(
        update(Run).where(Run.id == run_id, Run.status == "running", Run.step == step)
        .values(status="waiting", error=error[:4000])
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def interrupt(session: Session, run_id: int) -> bool:
    """Ctrl-C on a run done in this process: its claims are given back and the next `geocurate run` resumes it."""
    session.execute(
        update(Batch).where(Batch.run_id == run_id, Batch.status == "claimed")
        .values(status="queued", claimed_by=None, lease_until=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return session.execute(
        update(Run).where(Run.id == run_id, Run.status == "running")
        .values(status="interrupted", error="interrupted (Ctrl-C); run the same command again to resume")
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def resumable_run(session: Session, params: dict[str, Any], is_dead: Callable[[str | None], bool]) -> Run | None:
    """The newest run of the same submission (`params` with its steps) that was interrupted, that stopped waiting
    for review (`waiting`), or that is still marked running although the process doing it in-process is gone
    (killed, machine restarted)."""
    for run in session.scalars(select(Run).where(Run.status.in_(RESUMABLE)).order_by(Run.id.desc())):
        same = {k: v for k, v in run.params.items() if k != "owner"} == params
        if same and (run.status != "running" or is_dead(run.params.get("owner"))):
            return run
    return None


def reopen(session: Session, run: Run, owner: str | None) -> list[tuple[int, str]]:
    """Mark a resumable run running again (done in-process by `owner`, when embedded); returns its open batches
    (batch id, step) to send."""
    params = {**run.params, "owner": owner} if owner else run.params
    session.execute(
        update(Run).where(Run.id == run.id).values(status="running", error=None, finished_at=None, params=params)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(
        select(Batch.id, Batch.step).where(Batch.run_id == run.id, Batch.status.in_(OPEN)).order_by(Batch.id)
    ).tuples())


def get_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def current_step(session: Session, run_id: int) -> str:
    return session.scalar(select(Run.step).where(Run.id == run_id))


def running_runs(session: Session) -> list[tuple[int, str]]:
    return list(session.execute(select(Run.id, Run.step).where(Run.status == "running").order_by(Run.id)).tuples())


def record_failure(session: Session, task_name: str, task_id: str | None, arguments: dict[str, Any], error: str) -> None:
    session.add(TaskFailure(task_name=task_name, task_id=task_id, arguments=arguments, error=error[:4000],
                            created_at=utcnow()))


def renew(session: Session, claim_: Claim, lease_seconds: float) -> bool:
    """Extend this worker's lease; False when the batch is no longer ours (reconcile gave it to another worker)."""
    now = utcnow()
    changed = session.execute(
        update(Batch)
        .where(Batch.id == claim_.batch_id, Batch.status == "claimed", Batch.claimed_by == claim_.worker)
        .values(lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def run_summary(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """Per step: batches by status and the sum of every numeric count in the done batches' results."""
    summary: dict[str, dict[str, Any]] = {}
    rows = session.execute(
        select(Batch.step, Batch.status, Batch.result).where(Batch.run_id == run_id).order_by(Batch.id)
    ).tuples()
    for step, status, result in rows:
        entry = summary.setdefault(step, {"batches": {}, "totals": {}})
        entry["batches"][status] = entry["batches"].get(status, 0) + 1
        for key, value in _flatten(result or {}):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                entry["totals"][key] = entry["totals"].get(key, 0) + value
    return summary


def _flatten(result: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in result.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def list_runs(session: Session, limit: int | None = None) -> list[Run]:
    """Pipeline and training submissions, newest first (`geocurate runs list`)."""
    stmt = select(Run).order_by(Run.id.desc())
    return list(session.scalars(stmt.limit(limit) if limit else stmt))


def latest_done_training(session: Session, export_id: int, stage: str) -> TrainingRun | None:
    """The newest finished training of `stage` on an export: a pipeline run on an unchanged export skips it."""
    return session.scalars(
        select(TrainingRun).where(TrainingRun.export_id == export_id, TrainingRun.stage == stage,
                                  TrainingRun.status == "done").order_by(TrainingRun.id.desc()).limit(1)
    ).first()


def list_training_runs(session: Session, limit: int | None = None) -> list[TrainingRun]:
    """Training stages and evaluations, newest first (`geocurate runs list`)."""
    stmt = select(TrainingRun).order_by(TrainingRun.id.desc())
    return list(session.scalars(stmt.limit(limit) if limit else stmt))
