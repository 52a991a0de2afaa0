"""`geocurate sample OUT_DIR`: write the deterministic sample set (images, metadata.csv, clues.jsonl)."""

from __future__ import annotations

from pathlib import Path

import typer


def sample(
    out_dir: Path = typer.Argument(..., help="Folder to write images/, metadata.csv and clues.jsonl into."),
    images: int = typer.Option(50, "--images", min=4, help="Image files to draw (one of them corrupt)."),
    clues: int = typer.Option(30, "--clues", min=4, help="Clue lines to write (one of them malformed)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, byte-identical files."),
) -> None:
    """Draw a small street-scene sample set with coordinates, countries and clue texts, bad input included."""
    from geocurate.cli.sample_data import describe, generate_sample

    result = generate_sample(out_dir, n_images=images, n_clues=clues, seed=seed)
    typer.echo(describe(result))
    typer.echo(f"next: geocurate ingest images {result.images_dir} --metadata {result.metadata_csv}")
    typer.echo(f"      geocurate ingest clues {result.clues_jsonl}")


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("sample")(sample)
