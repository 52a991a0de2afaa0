"""`geocurate db upgrade`, `geocurate status`, `geocurate config`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from geocurate.settings import get_settings

db_app = typer.Typer(help="Manage the SQL store.", no_args_is_help=True)
config_app = typer.Typer(help="Show the configuration.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision to upgrade to.")) -> None:
    """Create or migrate the store's tables (alembic upgrade)."""
    from db.engine import masked
    from db.migrate import current_revision, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    typer.echo(f"store {masked(url)} at revision {current_revision(url)}")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings (secrets masked)."""
    from geocurate.masking import mask_url, scrub

    settings = get_settings()
    for name, value in settings.model_dump().items():
        shown = "" if value is None else mask_url(value) if isinstance(value, str) else str(value)
        typer.echo(f"GEOCURATE_{name.upper()}={scrub(shown, settings)}")


@config_app.command("docs")
def config_docs() -> None:
    """Print the README's configuration table (generated from the settings class)."""
    from geocurate.cli.config_docs import settings_table

    typer.echo(settings_table())


def status() -> None:
    """Counts per table and state, queued/claimed/failed work and the newest failures."""
    from db.engine import check_connection, masked, session_scope
    from db.status import store_status

    url = get_settings().database_url
    check_connection(url)
    with session_scope(url) as session:
        result = store_status(session)
    console = Console()
    table = Table(title=f"geocurate store {masked(url)}")
    table.add_column("table")
    table.add_column("state")
    table.add_column("rows", justify="right")
    for name, states in result.counts.items():
        if not states:
            table.add_row(name, "-", "0")
        for state, n in sorted(states.items()):
            table.add_row(name, state, str(n))
    console.print(table)
    if result.quarantine:
        reasons = Table(title="quarantine by reason (geocurate quarantine list --reason CODE)")
        for column, justify in (("kind", "left"), ("reason", "left"), ("rows", "right")):
            reasons.add_column(column, justify=justify)
        for (kind, reason), n in sorted(result.quarantine.items()):
            reasons.add_row(kind, reason, str(n))
        console.print(reasons)
    if result.recent_runs:
        runs = Table(title="newest runs")
        for column in ("run", "started", "status", "step", "error"):
            runs.add_column(column, overflow="fold")
        for run_id, started, state, step, error in result.recent_runs:
            runs.add_row(str(run_id), started, state, step, error)
        console.print(runs)
    if result.recent_failures:
        failures = Table(title="newest failures")
        for column in ("when", "what", "error"):
            failures.add_column(column)
        for row in result.recent_failures:
            failures.add_row(*row)
        console.print(failures)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(config_app, name="config")
    app.command("status")(status)
