"""`geocurate ingest clues FILE`, `geocurate clues assess TEXT`, `geocurate clues pair`."""

from __future__ import annotations

from pathlib import Path

import typer

from geocurate.errors import UserError

clues_app = typer.Typer(help="Clue texts: place recognition and pairing with images.", no_args_is_help=True)


def ingest_clues_command(
    file: Path = typer.Argument(..., help="JSONL or CSV with text, source, optional country, optional image."),
    source: str = typer.Option(None, help="Source recorded for lines that name none (default: the file name)."),
    encoding: str = typer.Option(None, help="The file's encoding (default UTF-8), e.g. latin-1, cp1252."),
) -> None:
    """Load clue texts, keep each with its decision (accepted / rejected / review) and print counts per outcome."""
    from curation.clues.gazetteer import get_gazetteer
    from curation.clues.ingest import ingest_clues
    from db.engine import check_connection, session_scope
    from geocurate.settings import get_settings

    settings = get_settings()
    url = settings.database_url
    check_connection(url)
    try:
        with session_scope(url) as session:
            summary = ingest_clues(session, file, get_gazetteer(settings), source=source, encoding=encoding)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for outcome, count in summary.counts().items():
        typer.echo(f"{outcome}: {count}")
    for reason in summary.quarantine_reasons:
        typer.echo(f"quarantined {reason}", err=True)


@clues_app.command("assess")
def assess_command(
    text: str = typer.Argument(..., help="A clue sentence."),
    country: str = typer.Option(None, help="The country given with the clue (name or code)."),
) -> None:
    """Show the places recognised in one clue and the decision it would get (nothing is stored)."""
    from curation.clues import assess_clue, get_gazetteer
    from geocurate.settings import get_settings

    verdict = assess_clue(text, country, gazetteer=get_gazetteer(get_settings()))
    typer.echo(f"{verdict.decision}: {verdict.reason}")
    for place in verdict.places:
        resolved = place.country or "ambiguous"
        typer.echo(f"  {place.text!r} [{place.start}:{place.end}] {place.kind} {'/'.join(place.codes)} -> {resolved}")


@clues_app.command("pair")
def pair_command(
    top_k: int = typer.Option(None, help="Images per clue (default GEOCURATE_PAIRING_TOP_K)."),
    min_similarity: float = typer.Option(None, help="Minimum cosine similarity (default GEOCURATE_PAIRING_MIN_SIMILARITY)."),
) -> None:
    """Pair accepted clues that have no image (one accepted in review too) with the most similar stored images of
    their country; when nothing is added, say why."""
    from curation.clip import load_clip
    from curation.pairing import pair_clues_explained
    from db.engine import check_connection, session_scope
    from geocurate.settings import get_settings

    settings = get_settings()
    url = settings.database_url
    check_connection(url)
    clip = load_clip(settings)
    with session_scope(url) as session:
        summary = pair_clues_explained(session, clip, settings.pairing_top_k if top_k is None else top_k,
                                       settings.pairing_min_similarity if min_similarity is None else min_similarity)
    typer.echo(f"pairs added: {summary.added} ({summary.clues_paired} of {summary.clues_considered} clue(s) "
               f"paired, {summary.linked} given image(s) linked)")
    if not summary.added:
        typer.echo(f"nothing paired: {summary.why_none()}")


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    ingest_app.command("clues")(ingest_clues_command)
    app.add_typer(clues_app, name="clues")
