"""`geocurate runs list`: what was submitted and how it ended, pipeline runs and training runs side by side, so an
operator sees a run's state and counts and a trainer sees each stage's metrics without opening the store."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from geocurate.settings import get_settings

runs_app = typer.Typer(help="Pipeline runs and training runs.", no_args_is_help=True)

SHOWN_COUNTS = ("added", "scored", "counts.images", "carried_over", "pairs", "routed", "retired", "unchanged", "already_trained")
SHOWN_METRICS = ("final_loss", "first_loss", "steps", "country_accuracy", "city_accuracy", "median_km", "mean_km",
                 "examples")


@runs_app.command("list")
def list_runs(limit: int = typer.Option(20, min=1, help="Rows of each table."),
              training: bool = typer.Option(True, help="Show training runs too (--no-training: pipeline only).")) -> None:
    """Pipeline runs (state, step, counts per step) and training runs (stage, export, metrics), newest first."""
    from db import batches
    from db.engine import check_connection, session_scope

    url = get_settings().database_url
    check_connection(url)
    with session_scope(url) as session:
        runs = [(r.id, r.kind, r.status, r.step, r.created_at, r.finished_at, r.error, r.params.get("export"),
                 batches.run_summary(session, r.id)) for r in batches.list_runs(session, limit)]
        trained = [(t.id, t.stage, t.status, t.export_id, getattr(t, "export_name", None), t.adapter_path,
                    dict(t.metrics or {}), t.finished_at) for t in batches.list_training_runs(session, limit)] \
            if training else []
    console = Console()
    table = Table(title="pipeline runs")
    for column in ("run", "kind", "status", "step", "started", "took", "export", "counts"):
        table.add_column(column)
    for run_id, kind, status, step, created, finished, error, export, summary in runs:
        table.add_row(str(run_id), kind, status, step, _when(created), _took(created, finished), export or "",
                      _counts(summary) + (f"\nerror: {error[:120]}" if error else ""))
    console.print(table)
    if not runs:
        typer.echo("no pipeline run yet: geocurate run DIR")
    if not training:
        return
    table = Table(title="training runs")
    for column in ("id", "stage", "status", "export", "adapter", "finished", "metrics"):
        table.add_column(column)
    for run_id, stage, status, export_id, export_name, adapter, metrics, finished in trained:
        table.add_row(str(run_id), stage, status, export_name or (str(export_id) if export_id else ""), adapter or "",
                      _when(finished), _metrics(metrics))
    console.print(table)
    if not trained:
        typer.echo("no training run yet: geocurate run ... --export NAME --train, or geocurate train NAME")


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""


def _took(start, end) -> str:
    if not start or not end:
        return ""
    seconds = (end - start).total_seconds() if start.tzinfo == end.tzinfo else None
    return f"{seconds:.0f} s" if seconds is not None else ""


def _counts(summary: dict[str, dict[str, Any]]) -> str:
    """Per step, the counts that say what the step changed (the full set is in `geocurate status`)."""
    parts = []
    for step, entry in summary.items():
        shown = [f"{key}={entry['totals'][key]:g}" for key in SHOWN_COUNTS if entry["totals"].get(key)]
        failed = entry["batches"].get("failed", 0)
        parts.append(f"{step}: " + (" ".join(shown) or "-") + (f" ({failed} failed)" if failed else ""))
    return "\n".join(parts)


def _metrics(metrics: dict[str, Any]) -> str:
    """The headline numbers of a stage (loss) or an evaluation (accuracy, km), flattened one level."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            flat[key] = value
    shown = [(k, v) for k, v in flat.items() if k.rsplit(".", 1)[-1] in SHOWN_METRICS] or list(flat.items())[:6]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
