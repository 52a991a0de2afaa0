"""A run's life: submit it, hand each finished step over to the next, and reconcile what dead workers left behind.

Progress and hand-over are rows in the store, not Celery chords: the worker that finishes a step's last batch moves
the run on with one guarded UPDATE (only one of several finishing at once wins) and, in the same transaction, creates
the next step's batches; their messages are sent after the commit. Anything a crash interrupts between those points
is found again by `reconcile` (expired claims, queued batches whose message was lost, runs whose step is over).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from db import batches
from db.engine import session_scope
from db.exports import export_by_id_or_name
from db.heartbeat import is_dead_local, worker_id
from geocurate.errors import UserError
from geocurate.settings import Settings
from workers.steps import pipeline_steps, step_of

log = logging.getLogger(__name__)

TRAINING_STAGES = ("reasoning", "location")


def run_pipeline(
    directory: Path | str,
    metadata: Path | str | None = None,
    clues: Path | str | None = None,
    export: str | None = None,
    train: bool = False,
    source: str | None = None,
    *,
    settings: Settings,
    encoding: str | None = None,
    pending: str | None = None,
    wait_review: bool = False,
) -> int:
    """Submit ingest → score → route (→ export → training) for the images under `directory`; returns the run id.
    Embedded (no broker): the whole run happens before this returns (with `wait_review`, it returns held at the
    review gate while reviews are open: see `review_hold`). With a broker: it returns once the ingest batches are
    queued; follow it with `run_progress`."""
    params = pipeline_params(directory, metadata, clues, export, train, source, settings, encoding, pending,
                             wait_review)
    return start_run(pipeline_steps(export, train), params, kind="pipeline", settings=settings)


def prepare_pipeline(directory: Path | str, metadata: Path | str | None = None, clues: Path | str | None = None,
                     export: str | None = None, train: bool = False, source: str | None = None, *,
                     settings: Settings, encoding: str | None = None, pending: str | None = None,
                     wait_review: bool = False) -> tuple[int, list[tuple[str, list[int]]], bool]:
    """run_pipeline without the sending, so the CLI can follow the run while its batches are sent (embedded: done).
    The same submission as an interrupted run, one that stopped waiting for review, or one whose in-process runner
    died resumes that run instead of starting another. Returns (run id, batches to send by step, resumed)."""
    params = pipeline_params(directory, metadata, clues, export, train, source, settings, encoding, pending,
                             wait_review)
    steps = pipeline_steps(export, train)
    owner = worker_id() if settings.embedded else None
    with session_scope(settings.database_url) as session:
        run = batches.resumable_run(session, {**params, "steps": steps}, is_dead_local)
        if run is not None:
            by_step: dict[str, list[int]] = {}
            for batch_id, step in batches.reopen(session, run, owner):
                by_step.setdefault(step, []).append(batch_id)
            return run.id, list(by_step.items()), True
    run_id, first = create_run(steps, {**params, "owner": owner} if owner else params, "pipeline", settings)
    return run_id, [first] if first else [], False


def continue_run(run_id: int, to_send: Sequence[tuple[str, list[int]]], settings: Settings) -> None:
    """Send (embedded: do) the given batches, then hand the run over if its step is already over (a resumed run
    that was interrupted between its last batch and the hand-over)."""
    _STOP.clear()
    for step, batch_ids in to_send:
        send(step, batch_ids, settings)
    with session_scope(settings.database_url) as session:
        run = batches.get_run(session, run_id)
        current = run.step if run is not None and run.status == "running" else None
    if current is not None and current != "done":
        after_batch(run_id, current, settings)


def interrupt_run(run_id: int, settings: Settings) -> bool:
    with session_scope(settings.database_url) as session:
        return batches.interrupt(session, run_id)


def failed_items(run_id: int, settings: Settings) -> list[tuple[str, int, str, list[str]]]:
    """(step, batch seq, error, items) of every failed batch: what `geocurate run` prints when a run is not done."""
    with session_scope(settings.database_url) as session:
        return [(b.step, b.seq, b.error or "", batches.batch_items(b.payload))
                for b in batches.failed_batches(session, run_id)]


def pipeline_params(directory: Path | str, metadata: Path | str | None, clues: Path | str | None, export: str | None,
                    train: bool, source: str | None, settings: Settings, encoding: str | None = None,
                    pending: str | None = None, wait_review: bool = False) -> dict[str, Any]:
    """The run's params, stored on its row: every step plans from them and a resumed run keeps them, so the
    pending policy and the review wait are here (the wait's timeout is not: it belongs to one command, and the same
    command with another timeout resumes the same run)."""
    from curation.decisions import PENDING_POLICIES

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"image directory {directory} does not exist")
    if train and not export:
        raise UserError("--train needs --export NAME: training reads an export")
    if pending is not None and pending not in PENDING_POLICIES:
        raise UserError(f"--pending must be one of {', '.join(PENDING_POLICIES)}, not {pending!r}")
    if pending is not None and not export:
        raise UserError("--pending needs --export NAME: it says what the export does with images waiting for review")
    if wait_review and not export:
        raise UserError("--wait-review needs --export NAME: it holds the export until the review band is answered")
    params: dict[str, Any] = {"directory": str(directory.resolve()), "source": source, "export": export}
    if export:
        params["pending"] = pending or "exclude"
    if wait_review:
        params["wait_review"] = True
    if encoding:
        params["encoding"] = encoding
    if metadata:
        if not Path(metadata).is_file():
            raise UserError(f"metadata file {metadata} does not exist")
        params["metadata"] = str(Path(metadata).resolve())
        _check_metadata(Path(metadata), encoding)
    if clues:
        if not Path(clues).is_file():
            raise UserError(f"clue file {clues} does not exist")
        params["clues"] = str(Path(clues).resolve())
    return params


def _check_metadata(path: Path, encoding: str | None) -> None:
    """Read the metadata once up front: a file that cannot be read at all (wrong encoding, no header) fails the
    submission with its name and line; bad rows are quarantined by the ingest step's folder batch."""
    from curation.metadata import read_metadata

    read_metadata(path, encoding)


def submit_training(
    export_id_or_name: int | str, stages: Sequence[str] = TRAINING_STAGES, *, settings: Settings
) -> int:
    """Train the given stages on an export, in order (each stage starts when the previous one is done).
    Embedded: runs inline and returns when done. Returns the run id."""
    with session_scope(settings.database_url) as session:
        if export_by_id_or_name(session, export_id_or_name) is None:
            raise UserError(f"export {export_id_or_name!r} does not exist; build it first (geocurate export NAME)")
    steps = [f"train:{stage}" for stage in stages]
    return start_run(steps, {"export": str(export_id_or_name), "kind": "train"}, kind="train", settings=settings)


def start_run(steps: Sequence[str], params: dict[str, Any], kind: str, settings: Settings) -> int:
    run_id, handed_over = create_run(steps, params, kind, settings)
    if handed_over:
        send(handed_over[0], handed_over[1], settings)
    return run_id


def create_run(steps: Sequence[str], params: dict[str, Any], kind: str,
               settings: Settings) -> tuple[int, tuple[str, list[int]] | None]:
    """The run row and its first step's batches, committed; returns the run id and the batches still to send."""
    params = {**params, "steps": list(steps)}  # what the run row holds: every step plans from the same params
    with session_scope(settings.database_url) as session:
        run_id = batches.create_run(session, steps, params, kind=kind)
        first = steps[0]
        payloads = step_of(first).plan(session, run_id, params, settings)
        if payloads:
            return run_id, (first, batches.add_batches(session, run_id, first, payloads))
        return run_id, _advance_from(session, run_id, first, list(steps), params, settings)


_STOP = threading.Event()


def request_stop() -> None:
    """Ctrl-C or SIGTERM on an embedded run: no further batch starts. The KeyboardInterrupt the signal raises is
    not enough on its own: raised inside a destructor (a garbage-collected Celery result), Python drops it."""
    _STOP.set()


def send(step: str, batch_ids: Iterable[int], settings: Settings) -> None:
    """Queue one message per batch (embedded: run it now, in this process, through the same task code)."""
    task_name = step_of(step).task
    if settings.embedded:
        from workers.app import app

        app.loader.import_default_modules()  # registers the tasks (workers.tasks) by name, as a worker does
        task = app.tasks[task_name]
        for batch_id in batch_ids:
            if _STOP.is_set():
                raise KeyboardInterrupt
            task.apply(args=(batch_id,))
        return
    from workers.app import sender_for

    sender = sender_for(settings)
    for batch_id in batch_ids:
        sender.send_task(task_name, args=(batch_id,))


def after_batch(run_id: int, step: str, settings: Settings) -> str | None:
    """Called after every batch: when the step has no open batch left, move the run on (once). Returns the step the
    run moved to, or None."""
    with session_scope(settings.database_url) as session:
        counts = batches.step_counts(session, run_id, step)
        if counts.get("queued") or counts.get("claimed"):
            return None
        run = batches.get_run(session, run_id)
        if run is None or run.status != "running" or run.step != step:
            return None
        failed = counts.get("failed", 0)
        if failed and step_of(step).critical:
            batches.fail_run(session, run_id, f"step {step}: {failed} batch(es) failed (see geocurate status)")
            return None
        handed_over = _advance_from(session, run_id, step, run.params["steps"], run.params, settings)
    if handed_over is None:
        return None
    send(handed_over[0], handed_over[1], settings)
    return handed_over[0]


def _advance_from(session, run_id: int, step: str, steps: list[str], params: dict[str, Any],
                  settings: Settings) -> tuple[str, list[int]] | None:
    """Move past `step` and plan the next step with work; steps with nothing to do are passed through. A run
    that waits for review is held after its route step while the band has open review tasks (`review_hold`)."""
    current = step
    while True:
        if current == GATE_STEP and _open_reviews(session, run_id, params):
            return None
        following = steps[steps.index(current) + 1] if steps.index(current) + 1 < len(steps) else "done"
        if not batches.advance(session, run_id, current, following):
            return None  # another worker finished the step at the same moment and moved the run on
        if following == "done":
            return None
        payloads = step_of(following).plan(session, run_id, params, settings)
        if payloads:
            return following, batches.add_batches(session, run_id, following, payloads)
        current = following


GATE_STEP = "route"  # a run with `wait_review` is held after this step while its band has open review tasks


def _open_reviews(session, run_id: int, params: dict[str, Any]) -> int:
    """Open review tasks in the run's scorer version's band, when the run waits for review (else 0)."""
    if not params.get("wait_review"):
        return 0
    from curation.decisions import open_review_count
    from workers.steps import scorer_version_of

    version = scorer_version_of(session, run_id)
    return open_review_count(session, version) if version else 0


def review_hold(run_id: int, settings: Settings) -> int | None:
    """How many review tasks a run started with `--wait-review` waits on, when it is held at the review gate
    (running, its route step over, open tasks in its band); None when it is not held there.

    Why the wait is a gate in the hand-over and not a step or a sleeping task: the hand-over after the route step
    (`_advance_from`) is the one place every path goes through — the embedded runner, the worker that finishes the
    route batch, `reconcile` on every beat and a resumed command — so each re-checks the same condition and the
    first to find the band answered moves the run on, once (the guarded UPDATE). Nothing holds a worker or a lease
    while people review; the run stays one row, and the command that started it waits (pulling Label Studio's
    answers) and moves it on itself, or marks it `waiting` on timeout so the same command resumes it."""
    with session_scope(settings.database_url) as session:
        run = batches.get_run(session, run_id)
        if run is None or run.status != "running" or run.step != GATE_STEP or not run.params.get("wait_review"):
            return None
        counts = batches.step_counts(session, run_id, GATE_STEP)
        if counts.get("queued") or counts.get("claimed"):
            return None
        return _open_reviews(session, run_id, run.params) or None


def review_scope(run_id: int, settings: Settings) -> dict[str, Any]:
    """The scorer version, threshold and band a held run waits on (for the messages)."""
    from curation.decisions import stored_rule
    from workers.steps import scorer_version_of

    with session_scope(settings.database_url) as session:
        version = scorer_version_of(session, run_id)
        rule = stored_rule(session, version) if version else None  # a version without a stored rule holds nothing
        run = batches.get_run(session, run_id)
        return {"scorer_version": version, "threshold": rule.threshold if rule else None,
                "band": rule.band if rule else None, "export": run.params.get("export") if run else None}


def stop_waiting(run_id: int, open_tasks: int, waited: float, settings: Settings) -> bool:
    """The wait timed out: the run is marked `waiting` (never done: its export is not built), and the same command
    resumes it. False when the run was moved on meanwhile (reconcile found the band answered)."""
    with session_scope(settings.database_url) as session:
        return batches.hold(session, run_id, GATE_STEP,
                            f"{open_tasks} open review task(s) after {waited:.0f} s; run the same command again "
                            "to keep waiting, or without --wait-review, with --pending exclude (they are left out) "
                            "or --pending score (their score decides), to export now")


def reconcile(settings: Settings) -> dict[str, int]:
    """Re-queue claims whose lease expired (their worker died), re-send queued batches whose message was lost, and
    move on runs whose step is over (a worker died between its last batch and the hand-over)."""
    with session_scope(settings.database_url) as session:
        expired = batches.requeue_expired(session)
        # a batch given back for a retry waits up to retry_backoff_max as a delayed message no queue length shows
        stale = batches.stale_queued(session, settings.lease_seconds + settings.retry_backoff_max)
        stale = [(batch_id, step) for batch_id, step in stale if _queue_is_empty(step, settings)]
        batches.touch(session, [batch_id for batch_id, _ in stale])
        running = batches.running_runs(session)
    for batch_id, step in expired + stale:
        send(step, [batch_id], settings)
    moved = sum(after_batch(run_id, step, settings) is not None for run_id, step in running)
    if expired or stale or moved:
        log.info("reconcile: %d expired claims re-queued, %d lost messages re-sent, %d runs moved on",
                 len(expired), len(stale), moved)
    return {"requeued": len(expired), "resent": len(stale), "advanced": moved}


def _queue_is_empty(step: str, settings: Settings) -> bool:
    """A queued batch behind a long backlog is not lost: re-send only when its queue holds no message at all."""
    if settings.embedded:
        return True
    from workers.app import queue_name, sender_for
    from workers.routing import TASK_ROUTES

    queue = queue_name(settings, TASK_ROUTES[step_of(step).task]["queue"])
    try:
        with sender_for(settings).connection_for_write() as connection:
            channel = connection.default_channel
            if hasattr(channel, "_size"):  # kombu's virtual transports (Redis): the list length, key prefix included
                return channel._size(queue) == 0
            _, depth, _ = channel.queue_declare(queue=queue, passive=True)
            return depth == 0
    except Exception as exc:  # noqa: BLE001 - AMQP: a queue that was never declared holds nothing; else unknown
        log.debug("queue %s: %s", queue, exc)
        return "NOT_FOUND" in str(exc).upper()


def sync_annotations(task_ids: Sequence[int] | None, settings: Settings) -> dict[str, Any]:
    from labeling.pull import pull_annotations
    from workers.steps import as_counts

    return as_counts(pull_annotations(settings.database_url, task_ids=list(task_ids) if task_ids else None,
                                      settings=settings))


def run_progress(run_id: int, settings: Settings) -> dict[str, Any]:
    """The run's state and, per step, batches by status and summed counts (what progress bars and tests read)."""
    with session_scope(settings.database_url) as session:
        run = batches.get_run(session, run_id)
        if run is None:
            raise UserError(f"run {run_id} does not exist")
        return {"status": run.status, "step": run.step, "error": run.error, "steps": list(run.params["steps"]),
                "summary": batches.run_summary(session, run_id), "wait_review": bool(run.params.get("wait_review"))}


def run_outcome(run_id: int, settings: Settings) -> dict[str, Any]:
    """What a finished run changed, in words: `changes` (empty when the run found nothing to do), `facts` (the
    state it left, for the "nothing to do" line) and `notes` (what the curator may want to act on). Read from the
    batches' stored results, so it is right for a run done on workers too."""
    with session_scope(settings.database_url) as session:
        summary = batches.run_summary(session, run_id)
        results = {step: batches.step_results(session, run_id, step) for step in summary}
    totals = {step: entry["totals"] for step, entry in summary.items()}
    changes: list[str] = []
    facts: list[str] = []
    notes: list[str] = []

    def count(step: str, *keys: str) -> int:
        return int(sum(totals.get(step, {}).get(key, 0) for key in keys))

    added, duplicates = count("ingest", "added"), count("ingest", "duplicates")
    new_clues = count("ingest", "clues.accepted", "clues.rejected", "clues.review")
    if added:
        changes.append(f"{added} new image(s)")
    if new_clues:
        changes.append(f"{new_clues} new clue(s)")
    if "ingest" in summary and not added:
        facts.append(f"no new images ({duplicates} already stored)" if duplicates else "no new images")
    quarantined = count("ingest", "quarantined", "clues.quarantined")
    if quarantined:
        notes.append(f"{quarantined} input file(s) or line(s) quarantined, each with its reason: "
                     "geocurate quarantine list")
    scored, carried, pairs = count("score", "scored"), count("score", "carried_over"), count("score", "pairs")
    version = next((r["scorer_version"] for r in results.get("score", []) if "carried_over" in r), None)
    if scored:
        changes.append(f"{scored} image(s) scored")
    if carried:
        changes.append(f"{carried} score(s) carried over to scorer {version}")
    if pairs:
        changes.append(f"{pairs} clue pair(s) added")
    if version and not scored and not carried:
        facts.append(f"every image already scored under scorer {version}")
    for result in results.get("score", []):
        if result.get("pairs_note"):
            notes.append(f"clue pairing added nothing: {result['pairs_note']}")
        if result.get("unscored_other_models"):
            notes.append(f"{result['unscored_other_models']} image(s) were segmented by other models; "
                         f"`geocurate score` scores them under scorer {result['scorer_version']}")
    routed, retired = count("route", "routed"), count("route", "retired")
    if routed:
        changes.append(f"{routed} item(s) queued for review")
    if retired:
        kept = count("route", "retired_kept_annotated")
        changes.append(f"{retired} stale review task(s) retired"
                       + (f" ({kept} annotated, kept in Label Studio)" if kept else ""))
    pushed = count("route", "pushed.created")
    if pushed:
        changes.append(f"{pushed} task(s) created in Label Studio")
    if "route" in summary and not routed and not retired and not pushed:
        facts.append("review queue current")
    for result in results.get("export", []):
        if result.get("unchanged"):
            facts.append(f"export {result['export']} unchanged (content hash {result.get('content_hash', '')[:12]})")
        elif result.get("export"):
            changes.append(f"export {result['export']} built")
            waiting = (result.get("counts") or {}).get("pending_review") or {}
            if waiting.get("pending"):
                notes.append(f"export {result['export']}: {waiting['pending']} image(s) waited for review: "
                             + (f"{waiting['left_out']} left out (--pending exclude)" if waiting["policy"] == "exclude"
                                else f"{waiting['kept_by_score']} kept and {waiting['dropped_by_score']} dropped by "
                                     "their score (--pending score)"))
    for step in summary:
        if step.startswith("train:"):
            for result in results[step]:
                if result.get("already_trained"):
                    facts.append(f"{step} already done (training run {result.get('training_run')})")
                else:
                    changes.append(f"{step} trained")
    return {"changes": changes, "facts": facts, "notes": notes}
