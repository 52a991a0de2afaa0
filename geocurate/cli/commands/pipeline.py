"""`geocurate run`: submit a pipeline run and follow it."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer

from geocurate.errors import UserError
from geocurate.settings import get_settings

POLL_SECONDS = 0.5
REVIEW_POLL_SECONDS = 2.0  # how often a run waiting for review re-counts (and pulls Label Studio's answers)
REVIEW_REPORT_SECONDS = 15.0  # one progress line this often while waiting (and whenever the count changes)


def run(
    directory: Path = typer.Argument(..., help="Folder of street-view images (searched recursively)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CSV: filename, lat, lon, country_code, city, source."),
    clues: Path | None = typer.Option(None, "--clues", help="JSONL clue texts to clean and pair with the images."),
    export: str | None = typer.Option(None, "--export", help="Build this export when routing is done."),
    train: bool = typer.Option(False, "--train", help="Then train both LoRA stages on the export (needs --export)."),
    source: str | None = typer.Option(None, "--source", help="Source label stored with each image."),
    encoding: str | None = typer.Option(None, "--encoding", help="Encoding of the metadata and clue files "
                                        "(default UTF-8), e.g. latin-1."),
    pending: str | None = typer.Option(None, "--pending", help="Images of the review band still waiting for a "
                                       "reviewer when the export is built: exclude (default: left out) or score "
                                       "(the score decides). Needs --export."),
    wait_review: bool = typer.Option(False, "--wait-review", help="Export only when no image of the review band "
                                     "has an open review task: wait after routing (pulling Label Studio's answers)."),
    timeout: float | None = typer.Option(None, "--timeout", min=0, help="With --wait-review: stop waiting after "
                                         "this many seconds (exit 75, nothing exported; the same command resumes)."),
) -> None:
    """Submit the pipeline (ingest → score → route [→ wait for review] [→ export → train]) and follow it until it ends.

    Embedded (no GEOCURATE_BROKER_URL): runs here, in-process; Ctrl-C stops it cleanly and running the same command
    again resumes it. With a broker: workers started by `geocurate worker` do the work; Ctrl-C stops following,
    not the run (except while waiting for review: then the run stops too, and the same command resumes it).
    Exit status: 0 when every item was processed or quarantined, 1 when batches failed (listed), 75 when
    --timeout ran out while waiting for review, 130 when interrupted."""
    if timeout is not None and not wait_review:
        raise UserError("--timeout goes with --wait-review: it bounds the wait for review")
    state = run_folder(directory, metadata, clues, export, train, source, encoding, pending=pending,
                       wait_review=wait_review, timeout=timeout)
    raise typer.Exit(EXIT_CODES.get(state["status"], 1))


# 75 is EX_TEMPFAIL ("try again later"): the same command goes on where the run stopped waiting
EXIT_CODES = {"done": 0, "partial": 1, "failed": 1, "waiting": 75, "interrupted": 130, "following_stopped": 130}


def run_folder(directory: Path, metadata: Path | None = None, clues: Path | None = None, export: str | None = None,
               train: bool = False, source: str | None = None, encoding: str | None = None, *,
               pending: str | None = None, wait_review: bool = False,
               timeout: float | None = None) -> dict[str, Any]:
    """Submit (or resume) the run, see it through, print its summary and what failed; returns its final state.

    With `wait_review` the run is held after its route step while its band has open review tasks (the gate is in
    the store's hand-over, workers.pipeline.review_hold); this process then waits, pulling answers, and moves the
    run on itself once the band is answered, so one command is one run, embedded or on workers."""
    from db.engine import check_connection
    from db.migrate import upgrade
    from workers import pipeline
    from workers.broker import check_broker

    settings = get_settings()
    if settings.embedded:
        upgrade(settings.database_url)  # the embedded store creates itself
    else:
        check_connection(settings.database_url)
        check_broker(settings)
    run_id, to_send, resumed = pipeline.prepare_pipeline(directory, metadata, clues, export, train, source,
                                                         settings=settings, encoding=encoding, pending=pending,
                                                         wait_review=wait_review)
    where = "embedded, in-process" if settings.embedded else "queued on " + _broker(settings)
    typer.echo(f"run {run_id}: {'resumed' if resumed else 'started'}, {where}")
    state = _drive(run_id, to_send, settings)
    if state["status"] == "running" and state.get("wait_review"):
        if _wait_for_review(run_id, settings, timeout):
            # the band is answered: export (and train) now; the bars of the steps before the wait were shown
            state = _drive(run_id, [], settings, shown=frozenset(state["steps"][:state["steps"].index("route") + 1]))
        else:
            state = pipeline.run_progress(run_id, settings)
    _report(run_id, state, settings)
    return state


def _drive(run_id: int, to_send: list[tuple[str, list[int]]], settings,
           shown: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Do (embedded) or send and follow (workers) the run until it ends or is held at the review gate; no bar
    for the steps in `shown`."""
    from workers import pipeline

    if settings.embedded:
        return _run_here(run_id, to_send, settings, shown)
    pipeline.continue_run(run_id, to_send, settings)
    return _follow_only(run_id, settings, shown)


def _wait_for_review(run_id: int, settings, timeout: float | None) -> bool:
    """Wait until no image of the run's band has an open review task; True when the run may go on (the band is
    answered, or another process moved it on). On timeout the run is marked `waiting`, on Ctrl-C or SIGTERM
    `interrupted`: both resume with the same command, and neither builds the export. Label Studio's answers are
    pulled on every check when it is configured; the local queue is answered with `geocurate review decide`, which
    writes to the store this loop reads."""
    from workers import pipeline

    scope = pipeline.review_scope(run_id, settings)
    rule = (f"threshold {scope['threshold']:g}, review band [{scope['band'][0]:g}, {scope['band'][1]:g})"
            if scope["band"] else "no recorded rule")
    typer.echo(f"run {run_id}: export {scope['export']} waits for review: scorer {scope['scorer_version']}, {rule}"
               + (f", up to {timeout:g} s" if timeout is not None else "") + "; "
               + ("answers are pulled from Label Studio" if settings.label_studio_url else
                  "answer with `geocurate review list` and `geocurate review decide ID LABEL`"))
    started = time.monotonic()
    pulled = 0
    reported: tuple[float, int | None] = (-REVIEW_REPORT_SECONDS, None)
    try:
        with _stop_signals():
            while True:
                if settings.label_studio_url:
                    pulled += _pull_answers(settings)
                open_tasks = pipeline.review_hold(run_id, settings)
                if open_tasks is None:
                    return True
                waited = time.monotonic() - started
                if open_tasks != reported[1] or waited - reported[0] >= REVIEW_REPORT_SECONDS:
                    typer.echo(f"waiting for review: {open_tasks} open task(s), pulled {pulled} answer(s)")
                    reported = (waited, open_tasks)
                if timeout is not None and waited >= timeout:
                    if not pipeline.stop_waiting(run_id, open_tasks, waited, settings):
                        return True  # moved on meanwhile (reconcile found the band answered)
                    return False
                time.sleep(min(REVIEW_POLL_SECONDS, max(0.05, timeout - waited) if timeout is not None else 1e9))
    except KeyboardInterrupt:
        pipeline.interrupt_run(run_id, settings)
        return False


def _pull_answers(settings) -> int:
    """One pull of every review project; the number of tasks whose decision changed. A Label Studio that does not
    answer is said once per check and waited out, not fatal: the reviewers' answers stay there."""
    from labeling.pull import pull_annotations

    try:
        return pull_annotations(settings.database_url, settings=settings).changed
    except Exception as exc:  # noqa: BLE001 - any transport or server error: try again at the next check
        typer.secho(f"warning: pulling answers from Label Studio failed: {exc}", err=True, fg=typer.colors.YELLOW)
        return 0


def _run_here(run_id: int, to_send: list[tuple[str, list[int]]], settings,
              shown: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Embedded: the work runs in this (main) thread, where Ctrl-C and SIGTERM arrive as KeyboardInterrupt; the
    batch in hand is given back, the run is marked interrupted, and the progress display stops with it."""
    from workers import pipeline

    stop = threading.Event()
    display = threading.Thread(target=follow, args=(run_id, settings, stop, shown), daemon=True)
    display.start()
    try:
        with _stop_signals():
            pipeline.continue_run(run_id, to_send, settings)
    except KeyboardInterrupt:
        pipeline.interrupt_run(run_id, settings)
    finally:
        stop.set()
        display.join()
    return pipeline.run_progress(run_id, settings)


def _follow_only(run_id: int, settings, shown: frozenset[str] = frozenset()) -> dict[str, Any]:
    from workers import pipeline

    try:
        follow(run_id, settings, threading.Event(), shown)
    except KeyboardInterrupt:
        state = pipeline.run_progress(run_id, settings)
        if state["status"] == "running":
            state["status"] = "following_stopped"
        return state
    return pipeline.run_progress(run_id, settings)


@contextlib.contextmanager
def _stop_signals():
    """Ctrl-C, and `docker stop`, systemd or `kill` (SIGTERM), end an embedded run the same way: no further batch
    starts, and the one in hand unwinds and is given back."""
    from workers import pipeline

    def interrupt(signum, frame):
        pipeline.request_stop()
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report(run_id: int, state: dict[str, Any], settings) -> None:
    """The summary table, then in words what the status means and, when it is not done, what failed."""
    from rich.console import Console

    from workers import pipeline

    console = Console()
    console.print(summary_table(run_id, state))
    status = state["status"]
    if status == "done":
        outcome = pipeline.run_outcome(run_id, settings)
        if outcome["changes"]:
            typer.echo(f"run {run_id} done: {', '.join(outcome['changes'])}; every item was processed or quarantined "
                       "(geocurate quarantine list)")
        else:
            typer.echo(f"run {run_id} done, nothing to do: {'; '.join(outcome['facts']) or 'nothing changed'}")
        for note in outcome["notes"]:
            typer.echo(f"note: {note}")
        return
    if status == "waiting":
        scope = pipeline.review_scope(run_id, settings)
        typer.secho(f"run {run_id} stopped waiting for review: {state['error']}", err=True, fg=typer.colors.YELLOW)
        typer.echo(f"  export {scope['export']} was not built; the open tasks: geocurate review list --kind images",
                   err=True)
        return
    if status == "interrupted":
        typer.secho(f"run {run_id} interrupted at step {state['step']}; run the same command again to resume it",
                    err=True, fg=typer.colors.YELLOW)
        return
    if status == "following_stopped":
        typer.echo(f"stopped following; run {run_id} goes on on the workers (geocurate status)", err=True)
        return
    typer.secho(f"run {run_id} {status} at step {state['step']}: {state['error'] or 'see geocurate status'}",
                err=True, fg=typer.colors.RED)
    failed = pipeline.failed_items(run_id, settings)
    for step, seq, error, items in failed:
        shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
        typer.echo(f"  failed: step {step}, batch {seq}: {error[:800]}\n    items: {shown}", err=True)
    if failed and all(error.startswith("UserError") for _, _, error, _ in failed):
        # a refused request (an export name taken by other content): the same command would be refused again
        typer.echo("change what was refused (above) and run again: the work already done is kept", err=True)
        return
    typer.echo("fix the cause and run the same command again: only the missing work is done", err=True)


def _broker(settings) -> str:
    from db.engine import masked

    return masked(settings.broker_url or "")


def follow(run_id: int, settings, stop: threading.Event, shown: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Progress bars from store counts (none for the steps in `shown`) until the run ends, is held at the review
    gate, or `stop` is set."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from workers import pipeline

    console = Console()
    bars: dict[str, Any] = {}
    stopping = False
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        while True:
            state = pipeline.run_progress(run_id, settings)
            for step in state["steps"]:
                entry = state["summary"].get(step)
                if entry is None or step in shown:
                    continue
                total = sum(entry["batches"].values())
                finished = entry["batches"].get("done", 0) + entry["batches"].get("failed", 0)
                if step not in bars:
                    bars[step] = progress.add_task(step, total=total, counts="")
                progress.update(bars[step], total=total, completed=finished, counts=_counts_line(entry["totals"]))
            if state["status"] != "running" or stopping or _held(run_id, state, settings):
                return state
            stopping = stop.wait(POLL_SECONDS)  # one more refresh after the stop: the bars end on the final counts


def _held(run_id: int, state: dict[str, Any], settings) -> bool:
    """Held at the review gate: the run stays `running`, but following it has nothing more to show."""
    from workers import pipeline

    return bool(state.get("wait_review")) and pipeline.review_hold(run_id, settings) is not None


def _counts_line(totals: dict[str, Any]) -> str:
    keys = ("added", "duplicates", "scored", "skipped", "quarantined", "images_queued", "clues_queued")
    return " ".join(f"{key}={int(totals[key])}" for key in keys if key in totals)


def summary_table(run_id: int, state: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"run {run_id}: {state['status']}")
    table.add_column("step")
    table.add_column("batches done", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("counts")
    for step in state["steps"]:
        entry = state["summary"].get(step, {"batches": {}, "totals": {}})
        counts = ", ".join(f"{key}={value:g}" for key, value in sorted(entry["totals"].items())
                           if not key.endswith(("_id", "seconds")) and key not in ("batch_id",))
        table.add_row(step, str(entry["batches"].get("done", 0)), str(entry["batches"].get("failed", 0)), counts)
    return table


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("run")(run)
