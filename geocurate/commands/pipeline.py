"""`geocurate demo` and `geocurate run` (the pipeline issue fills these in)."""

import typer


def demo() -> None:
    """Run the main job on the embedded default (for now: create the store and show it)."""
    from geocurate.commands.store import status
    from db.migrate import upgrade
    from geocurate.settings import get_settings

    upgrade(get_settings().database_url)
    status()


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("demo")(demo)
