"""`geocurate train EXPORT`, `geocurate eval EXPORT` and `geocurate predict IMAGE... --export NAME`: thin commands
over training.stages, training.evaluate and training.inference.

Each export has its own adapter set (`GEOCURATE_ADAPTERS_DIR/<export>/`); `--adapters DIR` names another set folder.
eval and predict refuse a set that belongs to another export or no longer matches its training run: that failure is
one line and exit status 1, like a bad image in predict.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from geocurate.errors import UserError

MISMATCH_EXIT = 1  # adapters that are not the named export's own, as the trainer's docs promise


class Stage(str, Enum):
    reasoning = "reasoning"
    location = "location"
    both = "both"


ADAPTERS_HELP = "Adapter set folder (reasoning/, location/ inside); default GEOCURATE_ADAPTERS_DIR/<export name>."


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


def _refuse(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(MISMATCH_EXIT)


def train(
    export: str = typer.Argument(..., help="Export folder, or an export name under GEOCURATE_EXPORT_DIR."),
    stage: Stage = typer.Option(Stage.both, "--stage", help="reasoning (stage 1), location (stage 2) or both."),
    adapters: Path | None = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
) -> None:
    """Fine-tune the vision-language model with LoRA on an export (resumes a crashed stage from its checkpoint)."""
    from geocurate.settings import get_settings
    from training.adapters import AdapterMismatch
    from training.stages import train_both, train_stage

    export_dir = resolve_export(export)
    _check_store()
    settings = get_settings()
    try:
        if stage is Stage.both:
            results = train_both(export_dir, settings, adapters_dir=adapters)
        else:
            results = [train_stage(export_dir, stage.value, settings, adapters_dir=adapters)]
    except AdapterMismatch as exc:  # stage 2 would stack another export's (or a changed) reasoning adapter
        raise _refuse(exc) from None
    for result in results:
        if result.status != "done":
            typer.echo(f"{result.stage}: {result.status}")
            continue
        m = result.metrics
        resumed = f", resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
        typer.echo(
            f"{result.stage}: run {result.run_id}, {m['steps']} steps on {m['examples']} examples, "
            f"loss {m.get('first_loss', float('nan')):.3f} -> {m.get('last_loss', float('nan')):.3f}, "
            f"{m['seconds_per_step']:.3f} s/step{resumed}; adapter {result.adapter_path} "
            f"(sha256 {(result.sha256 or '')[:12]})"
        )


def evaluate(
    export: str = typer.Argument(..., help="Export folder, or an export name under GEOCURATE_EXPORT_DIR."),
    adapters: Path | None = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    base_only: bool = typer.Option(False, "--base-only", help="Evaluate the base model without adapters."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
) -> None:
    """Score the export's own adapters on its test split: accuracy, distance shares, median km, GeoGuessr score."""
    from rich.console import Console
    from rich.table import Table

    from geocurate.settings import get_settings
    from training.adapters import AdapterMismatch
    from training.evaluate import evaluate_export, format_table

    export_dir = resolve_export(export)
    _check_store()
    try:
        metrics = evaluate_export(export_dir, adapters_dir=adapters, base_only=base_only, settings=get_settings())
    except AdapterMismatch as exc:
        raise _refuse(exc) from None
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"test split of {Path(export).name} (run {metrics.get('run_id')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in format_table(metrics):
        table.add_row(name, value)
    Console().print(table)


def export_name_for(export: str) -> str:
    """The export's name as its adapters record it: the manifest's name when the folder is here (a path or a name
    under GEOCURATE_EXPORT_DIR), else the name as given (an inference machine needs the adapters, not the export)."""
    from training.adapters import export_name_of

    try:
        return export_name_of(resolve_export(export))
    except UserError:
        return export


def predict(
    images: list[Path] = typer.Argument(..., help="Image files to locate."),
    export: str = typer.Option(..., "--export", help="The export whose adapters answer (name or folder)."),
    adapters: Path | None = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
) -> None:
    """Answer "where is this?" for each image as one JSON line: image, country, city, reasons, raw. An image that
    cannot be read gets a line with its error (and a quarantine record); the exit status is then 1."""
    from db.engine import session_scope
    from db.quarantine import quarantine
    from geocurate.settings import get_settings
    from training.adapters import AdapterMismatch
    from training.inference import predict as locate

    _check_store()
    settings = get_settings()
    try:
        predictions = locate([str(path) for path in images], export_name_for(export), settings, adapters_dir=adapters)
    except AdapterMismatch as exc:
        raise _refuse(exc) from None
    unreadable = 0
    for path, p in zip(images, predictions):
        line = {"image": str(path), "country": p.country, "country_code": p.country_code, "city": p.city,
                "reasons": p.reasons, "raw": p.raw, "parsed": p.parsed}
        if p.unreadable:
            unreadable += 1
            line["error"] = p.error
            with session_scope(settings.database_url) as session:
                quarantine(session, "prediction_image", str(Path(path).resolve()), "unreadable_image", p.error,
                           source="geocurate predict")
        elif not p.parsed:
            line["parse_error"] = p.error
        typer.echo(json.dumps(line, ensure_ascii=False))
    if unreadable:
        typer.secho(f"error: {unreadable} of {len(images)} images could not be read (quarantined)", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(1)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("predict")(predict)
