"""`geocurate score-image`, `geocurate score`, `geocurate rescore`, `geocurate ingest images`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geocurate.errors import UserError
from geocurate.settings import get_settings


def score_image(paths: list[Path] = typer.Argument(..., help="Image files to score.")) -> None:
    """Score image files without the store: one JSON object per image (path, locatability, top classes, decision)."""
    from curation.scoring import BadImage, Scorer

    scorer = Scorer.from_settings(get_settings())
    opened = []
    for path in paths:
        try:
            opened.append((path, scorer.open(path)))
        except BadImage as exc:
            typer.echo(json.dumps({"path": str(path), "error": str(exc), "reason": exc.reason}))
    for (path, _), result in zip(opened, scorer.score([image for _, image in opened])):
        typer.echo(json.dumps({"path": str(path), **result.as_json()}))


def score(limit: int = typer.Option(None, help="Score at most this many images.")) -> None:
    """Score every image without a score under the configured scorer, in batches of score_batch_size. Images
    scored before with the same models are carried over from their stored class ratios, without the models."""
    from rich.progress import Progress

    from curation.score_store import ScoreSummary, carry_over_scores, pending_image_ids, score_images
    from curation.scoring import Scorer
    from db.engine import check_connection, session_scope

    settings = get_settings()
    check_connection(settings.database_url)
    scorer = Scorer.from_settings(settings)
    with session_scope(settings.database_url) as session:
        carried = carry_over_scores(session, scorer.version, scorer.params, scorer.weights)
        pending = pending_image_ids(session, scorer.version, limit)
    total = ScoreSummary()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"scoring ({scorer.version})", total=len(pending))
        for start in range(0, len(pending), settings.score_batch_size):
            batch = pending[start : start + settings.score_batch_size]
            with session_scope(settings.database_url) as session:
                summary = score_images(session, scorer, batch)
            total.scored += summary.scored
            total.skipped += summary.skipped
            total.quarantined += summary.quarantined
            progress.advance(task, len(batch))
    typer.echo(f"scorer {scorer.version}: carried over {carried} from stored class ratios, scored {total.scored}, "
               f"skipped {total.skipped}, quarantined {total.quarantined}")


def rescore(
    from_version: str = typer.Option(..., "--from", help="Scorer version whose stored class ratios are reused."),
    weights: Path = typer.Option(None, help="JSON list of 150 class weights (default: class_weights_path or the "
                                            "paper's weights)."),
    threshold: float = typer.Option(None, help="New keep threshold (default: the source version's)."),
) -> None:
    """Rescore stored class ratios under new class weights or threshold; no model runs."""
    from curation.locatability import load_weights
    from curation.score_store import rescore_from_ratios
    from db.engine import check_connection, session_scope

    settings = get_settings()
    check_connection(settings.database_url)
    try:
        new_weights = load_weights(settings.model_copy(update={"class_weights_path": weights})
                                   if weights else settings)
        with session_scope(settings.database_url) as session:
            result = rescore_from_ratios(session, new_weights, from_version, threshold=threshold)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    typer.echo(f"scorer {result.scorer_version}: {result.rows} rows rescored from {from_version}")


def ingest_images_command(
    directory: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    metadata: Path = typer.Option(None, help="CSV with columns filename, lat, lon, country_code, city, source."),
    encoding: str = typer.Option(None, help="Encoding of the metadata CSV (default UTF-8), e.g. latin-1, cp1252."),
    source: str = typer.Option(None, help="Source name for images without one in the metadata."),
) -> None:
    """Add images to the store (sha256 dedup); bad files and metadata rows are quarantined with their reason."""
    from curation.ingest import ImageLimits, ingest_folder
    from db.engine import check_connection, session_scope

    settings = get_settings()
    check_connection(settings.database_url)
    if metadata is not None and not metadata.is_file():
        raise UserError(f"metadata file {metadata} does not exist")
    with session_scope(settings.database_url) as session:
        try:
            summary, match = ingest_folder(session, directory, metadata, encoding, source,
                                           ImageLimits.from_settings(settings))
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
    typer.echo(ingest_report(summary, match))


def ingest_report(summary, match) -> str:
    """What a curator needs to see after an ingest: what went in, what did not and why."""
    line = f"images: added {summary.added}, duplicates {summary.duplicates}, quarantined {summary.quarantined}"
    if summary.reasons:
        line += " (" + ", ".join(f"{reason} {n}" for reason, n in sorted(summary.reasons.items())) + ")"
    if match is not None:
        counts = match.counts()
        line += f"\nmetadata rows: matched {counts.pop('rows_matched')}"
        line += "".join(f", {reason} {n}" for reason, n in sorted(counts.items()))
    if summary.quarantined or (match is not None and match.problems):
        line += "\nsee them with: geocurate quarantine list"
    return line


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("score-image")(score_image)
    app.command("score")(score)
    app.command("rescore")(rescore)
    ingest_app.command("images")(ingest_images_command)
