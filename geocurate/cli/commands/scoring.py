"""`geocurate score-image`, `geocurate score`, `geocurate rescore`, `geocurate ingest images`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

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
    weights: Path = typer.Option(None, help="JSON weights: an object by ADE20K class name ({\"road\": 1.0, "
                                            "\"sky\": 0.02}; unnamed classes keep the paper's weight) or a list of "
                                            "150 numbers (default: the source version's weights)."),
    threshold: float = typer.Option(None, help="New keep threshold (default: the source version's)."),
    band: Optional[tuple[float, float]] = typer.Option(None, help="New review band LOW HIGH: scores in [LOW, HIGH) "
                                                                  "go to review (default: the source version's)."),
) -> None:
    """Store a scorer version with new class weights, threshold or review band, its rows computed from the stored
    class ratios (no model runs). Routing, review tasks, reports and exports of that version use its values."""
    from curation.locatability import load_weights, read_weights_file
    from curation.score_store import rescore_from_ratios
    from db.engine import check_connection, session_scope
    from db.scores import scorer_weights

    settings = get_settings()
    check_connection(settings.database_url)
    review_band = None if not band or band == (None, None) else (float(band[0]), float(band[1]))
    try:
        new_weights = read_weights_file(weights) if weights else None
        with session_scope(settings.database_url) as session:
            if new_weights is None and scorer_weights(session, from_version) is None:
                new_weights = load_weights(settings)  # a version registered before weights were stored
            result = rescore_from_ratios(session, new_weights, from_version, threshold=threshold,
                                         review_band=review_band)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    typer.echo(f"scorer {result.scorer_version}: {result.rows} rows rescored from {from_version}")
    typer.echo(f"  export it with: geocurate export NAME --scorer-version {result.scorer_version}")


versions_app = typer.Typer(help="Scorer versions: their models, threshold, review band and weights.",
                           no_args_is_help=True)


def describe_models(params: dict) -> str:
    """A version's segmentation in a few words: route and the short identities of its models."""
    route = params.get("segmenter", "?")
    if route == "sam":
        return f"sam {str(params.get('sam', '?'))[:24]} + clip {str(params.get('clip', '?'))[:16]}"
    if route == "maskformer":
        return f"maskformer {str(params.get('model', '?'))[:40]}"
    return str(route)


def describe_weights(params: dict, weights: list[float] | None) -> str:
    """'reference', or the classes whose weight differs from the paper's (a few, then a count)."""
    from curation.locatability import REFERENCE_WEIGHTS, changed_classes, weights_digest

    if weights is None:
        digest = params.get("weights")
        known = digest == weights_digest(REFERENCE_WEIGHTS)
        return "reference" if known else f"not stored (digest {digest})" if digest else "-"
    changed = changed_classes(weights)
    if not changed:
        return "reference"
    shown = ", ".join(f"{name} {value:g}" for name, value in list(changed.items())[:4])
    return shown + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")


@versions_app.command("list")
def versions_list() -> None:
    """Every scorer version: id, created, models, threshold, review band, weights changed from the reference,
    number of scores, and which one is current for the present settings (what `score` and `run` work on)."""
    from rich.console import Console
    from rich.table import Table

    from curation.decisions import DecisionRule
    from curation.locatability import load_weights
    from curation.score_store import current_version
    from db.engine import check_connection, session_scope
    from db.scores import version_table

    settings = get_settings()
    check_connection(settings.database_url)
    try:
        weights = load_weights(settings)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with session_scope(settings.database_url) as session:
        rows = version_table(session)
        current = current_version(session, settings.segmenter, DecisionRule.from_settings(settings), weights)
    if not rows:
        typer.echo("no scorer versions yet; run `geocurate score`")
        return
    table = Table(title="scorer versions (newest first)")
    for header in ("", "version", "created", "models", "threshold", "review band", "weights", "scores"):
        table.add_column(header, justify="right" if header in ("threshold", "scores") else "left")
    for version, created, params, stored_weights, count in rows:
        rule = DecisionRule.from_params(params)
        table.add_row("*" if version == current else "", version,
                      created.strftime("%Y-%m-%d %H:%M") if created else "-", describe_models(params),
                      f"{rule.threshold:g}" if rule else "-",
                      f"[{rule.review_low:g}, {rule.review_high:g})" if rule else "-",
                      describe_weights(params, stored_weights), f"{count:,}")
    Console(width=200).print(table)
    typer.echo(f"current for these settings: {current}" if current else
               "current for these settings: none yet (`geocurate score` or `rescore` creates it)")


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
    app.add_typer(versions_app, name="versions")
    ingest_app.command("images")(ingest_images_command)
