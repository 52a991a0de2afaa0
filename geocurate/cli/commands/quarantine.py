"""`geocurate quarantine list`: what was refused, why, and where it came from, without SQL."""

from __future__ import annotations

import typer

from geocurate.settings import get_settings

quarantine_app = typer.Typer(help="Inspect bad input kept out of the dataset.", no_args_is_help=True)


@quarantine_app.command("list")
def quarantine_list(
    kind: list[str] = typer.Option(None, "--kind", help="Only this item kind (image, metadata, clue, annotation ...)."),
    reason: list[str] = typer.Option(None, "--reason", help="Only this reason code (see `geocurate quarantine reasons`)."),
    limit: int = typer.Option(50, "--limit", help="Newest N rows; 0 for all."),
) -> None:
    """Quarantined items, newest first: kind, item, reason, source (file:line or folder) and detail."""
    from rich.console import Console
    from rich.table import Table

    from db.engine import check_connection, session_scope
    from db.quarantine import quarantine_rows

    url = get_settings().database_url
    check_connection(url)
    with session_scope(url) as session:
        rows = quarantine_rows(session, kind or (), reason or (), limit or None)
    table = Table(title=f"quarantine ({len(rows)} shown)")
    for column in ("kind", "item", "reason", "source", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.item_kind, row.reference, row.reason, row.source or "", (row.detail or "")[:300])
    Console(soft_wrap=False).print(table)


@quarantine_app.command("reasons")
def quarantine_reasons() -> None:
    """Every reason code and what it means."""
    from db.quarantine import REASONS

    for code, meaning in REASONS.items():
        typer.echo(f"{code:<22} {meaning}")


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.add_typer(quarantine_app, name="quarantine")
