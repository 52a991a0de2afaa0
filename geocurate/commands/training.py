"""Commands of this part (filled in by its issue)."""

import typer


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    pass
