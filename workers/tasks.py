"""Thin Celery tasks. A batch task claims its batch in the store, runs the step's plain function and marks the batch
done in the same transaction, then lets the pipeline hand over to the next step. Transient failures (database,
Label Studio 5xx or 429) are retried under the one retry policy of geocurate/retry.py; anything else is recorded,
not retried."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Task

from db import batches
from db.engine import session_scope
from db.heartbeat import is_dead_local, worker_id
from geocurate.errors import UserError
from geocurate.retry import backoff_delay, is_transient
from geocurate.settings import Settings, get_settings
from workers import pipeline, process
from workers.app import app
from workers.leases import kept_alive
from workers.steps import step_of

log = logging.getLogger(__name__)


def retry_or_give_up(task: Task, exc: Exception, arguments: dict[str, Any], settings: Settings) -> None:
    """Raise celery's Retry for a transient error with retries left; otherwise record the failure and re-raise."""
    if is_transient(exc) and task.request.retries < settings.task_max_retries:
        countdown = backoff_delay(task.request.retries, settings.retry_backoff_max)
        log.warning("%s %s: transient %s, retry %d in %.1fs", task.name, arguments, type(exc).__name__,
                    task.request.retries + 1, countdown)
        if task.request.is_eager:
            time.sleep(countdown)  # embedded: no broker to hold the ETA
        raise task.retry(exc=exc, countdown=countdown, max_retries=settings.task_max_retries)
    record_failure(task, exc, arguments, settings)
    raise exc


def record_failure(task: Task, exc: BaseException, arguments: dict[str, Any], settings: Settings) -> None:
    error = f"{type(exc).__name__}: {exc}"
    log.error("%s %s failed: %s", task.name, arguments, error)
    try:
        with session_scope(settings.database_url) as session:
            batches.record_failure(session, task.name, task.request.id, arguments, error)
    except Exception as store_exc:  # noqa: BLE001 - the store itself is down: the log line is all we can keep
        log.error("could not record the failure of %s: %s", task.name, store_exc)


def _quietly(what: str, action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - best effort; reconcile repairs what this leaves
        log.warning("%s failed: %s", what, exc)


def run_batch(task: Task, batch_id: int) -> dict[str, Any]:
    settings = get_settings()
    url = settings.database_url
    arguments = {"batch_id": batch_id}
    worker = worker_id()
    try:
        with session_scope(url) as session:
            claim = batches.claim(session, batch_id, worker, settings.lease_seconds)
            if claim is None:
                state = batches.holder(session, batch_id)
                if state and state[0] == "claimed" and is_dead_local(state[1]):
                    claim = batches.take_over(session, batch_id, state[1], worker, settings.lease_seconds)
            params = batches.get_run(session, claim.run_id).params if claim else {}
    except Exception as exc:
        retry_or_give_up(task, exc, arguments, settings)
    if claim is None:
        log.info("batch %s: already done or held by a live worker; this delivery changes nothing", batch_id)
        return {"batch_id": batch_id, "skipped": True}

    step = step_of(claim.step)
    try:
        with process.working_on(batch_id), _lease(claim, settings):
            with session_scope(url) as session:
                result = step.work(session, claim, params, settings)
                if not batches.finish(session, claim, result):
                    log.warning("batch %s: lease was taken over; the writes above are idempotent", batch_id)
    except Exception as exc:
        if process.stopping():  # the shutdown's unwinding broke the step's query: not the batch's failure
            _hand_back(url, claim)
        if is_transient(exc) and task.request.retries < settings.task_max_retries:
            _quietly("release", lambda: _in_store(url, batches.release, claim))
            retry_or_give_up(task, exc, arguments, settings)
        _quietly("mark failed", lambda: _in_store(url, batches.fail, claim, f"{type(exc).__name__}: {exc}"))
        record_failure(task, exc, arguments, settings)
        _quietly("hand-over", lambda: pipeline.after_batch(claim.run_id, claim.step, settings))
        if isinstance(exc, UserError):  # a refused request (an export name taken by other content): its message is
            return {"batch_id": batch_id, "failed": str(exc)}  # the whole story; no traceback in the worker's log
        raise
    except BaseException:  # SIGTERM (ShutdownRequested), KeyboardInterrupt: give the batch back, then go
        _hand_back(url, claim)
        raise
    _quietly("hand-over", lambda: pipeline.after_batch(claim.run_id, claim.step, settings))
    return {"batch_id": batch_id, **result}


def _hand_back(url: str, claim: batches.Claim) -> None:
    """Release the batch so the next delivery claims it at once; a pool process told to stop then leaves the way a
    killed one does, so that its message goes back to the broker instead of being acked as a failure. The store's
    connections start afresh: the interrupted query may have left its own mid-conversation."""
    from db.engine import dispose_all

    dispose_all()
    _quietly("release", lambda: _in_store(url, batches.release, claim))
    log.warning("batch %s: given back on shutdown", claim.batch_id)
    if process.stopping():
        process.leave()


def _in_store(url: str, action: Callable[..., Any], *args: Any) -> Any:
    with session_scope(url) as session:
        return action(session, *args)


def _lease(claim: batches.Claim, settings: Settings):
    from contextlib import nullcontext

    if settings.embedded:
        return nullcontext()  # one process: nobody else could take the batch over
    return kept_alive(claim, settings)


@app.task(bind=True, name="workers.tasks.ingest_batch")
def ingest_batch(self: Task, batch_id: int) -> dict[str, Any]:
    return run_batch(self, batch_id)


@app.task(bind=True, name="workers.tasks.score_batch")
def score_batch(self: Task, batch_id: int) -> dict[str, Any]:
    return run_batch(self, batch_id)


@app.task(bind=True, name="workers.tasks.route_for_review")
def route_for_review(self: Task, batch_id: int) -> dict[str, Any]:
    return run_batch(self, batch_id)


@app.task(bind=True, name="workers.tasks.build_export")
def build_export(self: Task, batch_id: int) -> dict[str, Any]:
    return run_batch(self, batch_id)


@app.task(bind=True, name="workers.tasks.train_stage")
def train_stage(self: Task, batch_id: int) -> dict[str, Any]:
    return run_batch(self, batch_id)


@app.task(bind=True, name="workers.tasks.sync_annotations")
def sync_annotations(self: Task, task_ids: Sequence[int] | None = None) -> dict[str, Any]:
    settings = get_settings()
    if not settings.label_studio_url:
        return {"skipped": "no GEOCURATE_LABEL_STUDIO_URL"}
    try:
        return pipeline.sync_annotations(task_ids, settings)
    except Exception as exc:
        retry_or_give_up(self, exc, {"task_ids": list(task_ids or [])}, settings)
        raise


@app.task(bind=True, name="workers.tasks.reconcile")
def reconcile(self: Task) -> dict[str, int]:
    settings = get_settings()
    try:
        return pipeline.reconcile(settings)
    except Exception as exc:
        if is_transient(exc):
            raise  # the next beat tick reconciles again; no retry pile-up
        record_failure(self, exc, {}, settings)
        raise
