"""`geocurate train EXPORT --stage reasoning|location|both` and `geocurate eval EXPORT`: thin commands over
training.stages and training.evaluate."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from geocurate.errors import UserError


class Stage(str, Enum):
    reasoning = "reasoning"
    location = "location"
    both = "both"


def _check_store() -> None:
    """Training and evaluation record their runs in the store: find out it is unreachable before loading a model."""
    from db.engine import check_connection
    from geocurate.settings import get_settings

    check_connection(get_settings().database_url)


def resolve_export(export: str) -> Path:
    """An export folder path, or the name of an export under settings.export_dir."""
    from geocurate.settings import get_settings

    for candidate in (Path(export), Path(get_settings().export_dir) / export):
        if candidate.is_dir():
            return candidate.resolve()
    raise UserError(f"no export folder {export!r} (neither a path nor a name under {get_settings().export_dir})")


def train(
    export: str = typer.Argument(..., help="Export folder, or an export name under GEOCURATE_EXPORT_DIR."),
    stage: Stage = typer.Option(Stage.both, "--stage", help="reasoning (stage 1), location (stage 2) or both."),
    adapters: Path | None = typer.Option(None, "--adapters", help="Adapters folder (default GEOCURATE_ADAPTERS_DIR)."),
) -> None:
    """Fine-tune the vision-language model with LoRA on an export (resumes a crashed stage from its checkpoint)."""
    from geocurate.settings import get_settings
    from training.stages import train_both, train_stage

    export_dir = resolve_export(export)
    _check_store()
    settings = get_settings()
    if stage is Stage.both:
        results = train_both(export_dir, settings, adapters_dir=adapters)
    else:
        results = [train_stage(export_dir, stage.value, settings, adapters_dir=adapters)]
    for result in results:
        if result.status != "done":
            typer.echo(f"{result.stage}: {result.status}")
            continue
        m = result.metrics
        resumed = f", resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
        typer.echo(
            f"{result.stage}: run {result.run_id}, {m['steps']} steps on {m['examples']} examples, "
            f"loss {m.get('first_loss', float('nan')):.3f} -> {m.get('last_loss', float('nan')):.3f}, "
            f"{m['seconds_per_step']:.3f} s/step{resumed}; adapter {result.adapter_path}"
        )


def evaluate(
    export: str = typer.Argument(..., help="Export folder, or an export name under GEOCURATE_EXPORT_DIR."),
    adapters: Path | None = typer.Option(None, "--adapters", help="Adapters folder (default GEOCURATE_ADAPTERS_DIR)."),
    base_only: bool = typer.Option(False, "--base-only", help="Evaluate the base model without adapters."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
) -> None:
    """Score the model on the export's test split: accuracy, distance shares, median km, GeoGuessr score."""
    from rich.console import Console
    from rich.table import Table

    from geocurate.settings import get_settings
    from training.evaluate import evaluate_export, format_table

    export_dir = resolve_export(export)
    _check_store()
    metrics = evaluate_export(export_dir, adapters_dir=adapters, base_only=base_only, settings=get_settings())
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"test split of {Path(export).name} (run {metrics.get('run_id')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in format_table(metrics):
        table.add_row(name, value)
    Console().print(table)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
