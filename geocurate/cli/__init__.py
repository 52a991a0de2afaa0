"""The `geocurate` command line: thin commands over plain functions in the parts (see geocurate/cli/commands/).

Heavy libraries (torch, open_clip, transformers) are imported inside commands, so `geocurate --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from geocurate.cli.commands import (
    clues, demo, exports, pipeline, quarantine, review, runs, sample, scoring, store, training, workers,
)

app = typer.Typer(
    name="geocurate",
    help="Curate and label street-view images for geo-localization (GeoReasoner-style locatability).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ingest_app = typer.Typer(help="Add images or clue texts to the store.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

for module in (store, scoring, clues, review, exports, training, pipeline, runs, workers, quarantine, sample, demo):
    module.register(app, ingest_app)


def main() -> None:
    """Console entry point: a failure prints one scrubbed line (`error: ...`) and exits non-zero; a traceback only
    with GEOCURATE_DEBUG set. Log records pass through the same scrubbing, so no path prints a secret."""
    from geocurate.failures import install_thread_hook, report

    _scrubbed_logging()
    install_thread_hook()
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - every failure reaches the user through report()
        sys.exit(report(exc))


def _scrubbed_logging() -> None:
    """Warnings go to stderr as before (message only), through a handler that scrubs them."""
    import logging

    from geocurate.masking import scrub_logs

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    scrub_logs(root)
