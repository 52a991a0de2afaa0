"""`geocurate run`: submit a pipeline run and follow it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import typer

from geocurate.errors import UserError
from geocurate.settings import get_settings

POLL_SECONDS = 0.5


def run(
    directory: Path = typer.Argument(..., help="Folder of street-view images (searched recursively)."),
    metadata: Path | None = typer.Option(None, "--metadata", help="CSV: filename, lat, lon, country_code, city, source."),
    clues: Path | None = typer.Option(None, "--clues", help="JSONL clue texts to clean and pair with the images."),
    export: str | None = typer.Option(None, "--export", help="Build this export when routing is done."),
    train: bool = typer.Option(False, "--train", help="Then train both LoRA stages on the export (needs --export)."),
    source: str | None = typer.Option(None, "--source", help="Source label stored with each image."),
) -> None:
    """Submit the pipeline (ingest → score → route [→ export → train]) and follow it until it ends.

    Embedded (no GEOCURATE_BROKER_URL): runs here, in-process. With a broker: workers started by `geocurate worker`
    do the work; interrupting this command stops following, not the run."""
    from db.engine import check_connection
    from db.migrate import upgrade
    from workers import pipeline

    settings = get_settings()
    if settings.embedded:
        upgrade(settings.database_url)  # the embedded store creates itself
    else:
        check_connection(settings.database_url)
    run_id, first = pipeline.prepare_pipeline(directory, metadata, clues, export, train, source, settings)
    sender = threading.Thread(target=_send, args=(first, settings), daemon=True) if first else None
    if sender:
        sender.start()
    typer.echo(f"run {run_id}: {'embedded, in-process' if settings.embedded else 'queued on ' + _broker(settings)}")
    final = follow(run_id, settings, sender)
    if final["status"] != "done":
        raise UserError(f"run {run_id} {final['status']} at step {final['step']}: {final['error'] or 'see geocurate status'}")


def _broker(settings) -> str:
    from db.engine import masked

    return masked(settings.broker_url or "")


def _send(first: tuple[str, list[int]], settings) -> None:
    from workers import pipeline

    pipeline.send(first[0], first[1], settings)


def follow(run_id: int, settings, sender: threading.Thread | None) -> dict[str, Any]:
    """Progress bars from store counts until the run ends; then the summary table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from workers import pipeline

    console = Console()
    bars: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        while True:
            state = pipeline.run_progress(run_id, settings)
            for step in state["steps"]:
                entry = state["summary"].get(step)
                if entry is None:
                    continue
                total = sum(entry["batches"].values())
                finished = entry["batches"].get("done", 0) + entry["batches"].get("failed", 0)
                if step not in bars:
                    bars[step] = progress.add_task(step, total=total, counts="")
                progress.update(bars[step], total=total, completed=finished, counts=_counts_line(entry["totals"]))
            if state["status"] != "running":
                break
            if settings.embedded and sender is not None and not sender.is_alive():
                pipeline.reconcile(settings)  # a hand-over interrupted by an error is finished here
                state = pipeline.run_progress(run_id, settings)
                if state["status"] == "running":
                    state["status"], state["error"] = "stopped", "the in-process run ended early (see the log)"
                    break
            time.sleep(POLL_SECONDS)
    console.print(summary_table(run_id, state))
    return state


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
