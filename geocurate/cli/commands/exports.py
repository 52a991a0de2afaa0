"""`geocurate export NAME`, `geocurate thresholds report`, `geocurate thresholds fit-weights`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geocurate.errors import UserError
from geocurate.settings import get_settings

thresholds_app = typer.Typer(help="Tune the locatability threshold and the class weights.", no_args_is_help=True)


def export(
    name: str = typer.Argument(..., help="Export name: a new folder under export_dir (exports are never overwritten)."),
    threshold: float = typer.Option(None, help="Keep images with locatability at or above this (default: the scorer "
                                               "version's own threshold)."),
    scorer_version: str = typer.Option(None, help="Scores to use (default: the version current for these settings, "
                                                  "else the latest; see `geocurate versions list`)."),
    split: str = typer.Option("0.8/0.1/0.1", help="train/val/test shares, split by city (or H3 cell)."),
    seed: int = typer.Option(0, help="Seed of the geo-aware split."),
    images: str = typer.Option(None, help="link or copy (default: export_images)."),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep near-duplicate images."),
    pending: str = typer.Option("exclude", help="Images in the review band still waiting for a reviewer: exclude "
                                                "(left out) or score (the score decides)."),
    train: bool = typer.Option(False, "--train", help="Then enqueue the two-stage training on this export (refused "
                                                      "when a stage would get no example)."),
) -> None:
    """Build a curated, versioned export (manifest, location and reasoning JSONL, images) and record it."""
    from curation.export import ExportParams, build_export
    from curation.export.plan import plan_selection, record_selection
    from curation.export.params import TRAIN_STAGES
    from curation.export.readiness import EmptyExport, empty_stage_message, empty_stages, usable_counts
    from db.engine import check_connection, session_scope

    settings = get_settings()
    params = ExportParams.from_settings(settings, name, threshold=threshold, scorer_version=scorer_version, split=split,
                                        seed=seed, images=images, dedup=not no_dedup, pending=pending,
                                        train_stages=TRAIN_STAGES if train else ())
    check_connection(settings.database_url)
    if train:
        from workers.broker import check_broker

        check_broker(settings)  # before the export is built, not after
    with session_scope(settings.database_url) as session:
        if params.scorer_version is None:
            params = params.with_scorer_version(current_or_latest(session, settings))
        params = params.resolved(session)
        selection = plan_selection(session, params)  # recorded below: a later `run --export NAME` compares to it
    band = f"[{params.review_band[0]:g}, {params.review_band[1]:g})" if params.review_band else "none recorded"
    typer.echo(f"scorer {params.scorer_version}: threshold {params.threshold:g}, review band {band}, "
               f"pending reviews: {params.pending}")
    try:
        result = build_export(params, settings.database_url)
        if result.export_id is not None:
            with session_scope(settings.database_url) as session:
                record_selection(session, result.export_id, selection)
    except EmptyExport as exc:  # one line and exit 1: nothing was written, nothing is queued
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    location = result.counts["location"]
    waiting = result.counts.get("pending_review") or {}
    typer.echo(f"export {result.name}: {result.path}")
    typer.echo(f"  location train/val/test: {location['train']}/{location['val']}/{location['test']}; "
               f"reasoning: {result.counts['reasoning']['train']}; "
               f"near-duplicates removed: {result.removed_duplicates}")
    if waiting.get("pending"):
        typer.echo(f"  pending review: {waiting['pending']} images in the band wait for a reviewer: "
                   + (f"{waiting['left_out']} left out (--pending score lets their score decide)"
                      if params.pending == "exclude" else
                      f"{waiting['kept_by_score']} kept and {waiting['dropped_by_score']} dropped by their score"))
    typer.echo(f"  content hash {result.content_hash}")
    empty = empty_stages(result.counts)
    if empty and not train:
        with session_scope(settings.database_url) as session:
            usable = usable_counts(session, params)
        for stage in empty:
            typer.secho(f"warning: {empty_stage_message(params, usable, stage, 0)}", err=True,
                        fg=typer.colors.YELLOW)
    if train:
        from workers.pipeline import submit_training

        run_id = submit_training(result.export_id, stages=("reasoning", "location"), settings=settings)
        typer.echo(f"  training run {run_id} submitted (reasoning, then location)")


def current_or_latest(session, settings) -> str:
    """The scorer version an export uses when none is named: the one current for these settings (same segmenter,
    weights, threshold and band), else the latest registered one."""
    from curation.decisions import DecisionRule
    from curation.locatability import load_weights
    from curation.score_store import current_version
    from db.exports import latest_scorer_version

    try:
        current = current_version(session, settings.segmenter, DecisionRule.from_settings(settings),
                                  load_weights(settings))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    version = current or latest_scorer_version(session)
    if not version:
        raise UserError("the store has no scores yet; run `geocurate score` first")
    return version


@thresholds_app.command("report")
def thresholds_report(
    out: Path = typer.Option(None, "--out", help="Folder for report.html and the plots (default: data_dir/reports)."),
    scorer_version: str = typer.Option(None, help="Scores to report on (default: the latest scorer version)."),
) -> None:
    """Histograms, precision/recall/F1 against human labels, calibration and dataset size per threshold."""
    from rich.console import Console
    from rich.table import Table

    from curation.thresholds import build_report
    from curation.thresholds.render import THRESHOLD_HEADERS, marked_thresholds, threshold_table_rows, version_line
    from db.engine import check_connection

    settings = get_settings()
    check_connection(settings.database_url)
    report = build_report(settings.database_url, out, scorer_version, reports_dir=settings.data_dir / "reports")
    stats = report.stats
    table = Table(title=f"scorer {stats.scorer_version}: {stats.total:,} images, {stats.labelled} human-labelled")
    for header in THRESHOLD_HEADERS:
        table.add_column(header, justify="right")
    for row, values in zip(stats.rows, threshold_table_rows(stats)):
        style = "bold yellow" if row.threshold in marked_thresholds(stats) else None
        table.add_row(*values, style=style)
    console = Console()
    console.print(table)
    if stats.best_threshold is not None:
        console.print(f"best F1 {stats.best_f1:.3f} at threshold {stats.best_threshold:.2f} (paper: 0.4)")
    console.print(version_line(stats))
    if report.fit is not None:
        fit = report.fit
        console.print(f"re-fitted weights: held-out AUC {fit.fitted_auc:.3f} vs reference {fit.reference_auc:.3f} "
                      f"({'better' if fit.better else 'not better'}); `geocurate thresholds fit-weights` saves them")
    console.print(f"report: {report.html}")


@thresholds_app.command("fit-weights")
def thresholds_fit_weights(
    out: Path = typer.Option(..., "--out", help="JSON file for the 150 weights (use it as class_weights_path)."),
    scorer_version: str = typer.Option(None, help="Scores whose class ratios and labels to fit (default: latest)."),
    l2: float = typer.Option(None, help="L2 penalty (default: chosen on a validation part of the labels)."),
    seed: int = typer.Option(0, help="Seed of the held-out split."),
) -> None:
    """Re-fit the class weights from human labels and save them, with a comparison against the reference."""
    from curation.thresholds import fit_class_weights, labelled_class_ratios
    from db.engine import check_connection, session_scope
    from db.exports import latest_scorer_version

    settings = get_settings()
    check_connection(settings.database_url)
    with session_scope(settings.database_url) as session:
        version = scorer_version or latest_scorer_version(session)
        if not version:
            raise UserError("the store has no scores yet; run `geocurate score` first")
        ratios, locatable = labelled_class_ratios(session, version)
    try:
        fit = fit_class_weights(ratios, locatable, l2=l2, seed=seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    fit.save(out)
    typer.echo(json.dumps({"weights": str(out), "better_than_reference": fit.better, "heldout_auc": fit.fitted_auc,
                           "reference_auc": fit.reference_auc, "heldout_f1": fit.fitted_f1,
                           "reference_f1": fit.reference_f1, "threshold": fit.fitted_threshold}))
    if not fit.better:
        typer.echo("the re-fitted weights do not beat the reference on held-out labels: keep the reference",
                   err=True)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("export")(export)
    app.add_typer(thresholds_app, name="thresholds")
