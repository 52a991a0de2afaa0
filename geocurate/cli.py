"""The `geocurate` command line: thin commands over plain functions in the parts (see geocurate/commands/).

Heavy libraries (torch, open_clip, transformers) are imported inside commands, so `geocurate --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from geocurate.commands import (
    clues, demo, exports, pipeline, quarantine, review, sample, scoring, store, training, workers,
)
from geocurate.errors import UserError

app = typer.Typer(
    name="geocurate",
    help="Curate and label street-view images for geo-localization (GeoReasoner-style locatability).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ingest_app = typer.Typer(help="Add images or clue texts to the store.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

for module in (store, scoring, clues, review, exports, training, pipeline, workers, quarantine, sample, demo):
    module.register(app, ingest_app)


def main() -> None:
    """Console entry point: known failures print one line (`error: ...`) and exit 2 instead of a traceback."""
    from db.engine import StoreUnavailable

    try:
        app()
    except (UserError, StoreUnavailable) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
