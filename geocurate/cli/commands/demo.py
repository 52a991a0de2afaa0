"""`geocurate demo`: the main job on the embedded default, on a generated sample with tiny random-weight models.

It is the same path as `geocurate run` on real data (ingest → score → route → export → two-stage training), then
evaluation and the curator's threshold report, so a fresh clone proves the whole flow in a few minutes.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import typer

DEMO_BANNER = "demo models — scores are not meaningful (tiny random-weight models; real weights cannot be downloaded here)"

# Random-weight models give low, narrow locatabilities (0.28–0.36 on the sample, a few at 0), so the demo puts its
# threshold and review band inside that range instead of the paper's 0.4 (some images kept, some sent to the local
# review queue, some dropped), and a coarser SAM point grid keeps it within minutes on 2 cores. The band lies just
# below the threshold: images waiting for a reviewer are left out of an export (`--pending exclude`), and a band
# around the threshold would leave the demo's export with no test split; here a reviewer can still rescue them.
# Random-weight open_clip embeddings put every street view of the sample above 0.95 cosine similarity of another
# (0.96–0.99; the sample's planted copies at 0.9998), so near-duplicate removal across the selection would leave a
# handful of images: the demo only calls copies duplicates.
# The export has about a dozen location examples: the `small` training preset gives them steps to learn from, so
# the loss visibly falls (the defaults, sized for thousands of examples, ran 3 steps there, the first at lr 0).
# A value the user set in the environment wins.
DEMO_SETTINGS = {
    "GEOCURATE_DEMO_MODELS": "true",
    "GEOCURATE_THRESHOLD": "0.3",
    "GEOCURATE_REVIEW_BAND_LOW": "0.29",
    "GEOCURATE_REVIEW_BAND_HIGH": "0.30",
    "GEOCURATE_SAM_POINTS_PER_SIDE": "8",
    "GEOCURATE_DEDUP_SIMILARITY": "0.999",
    "GEOCURATE_TRAIN_PRESET": "small",
}


def demo(
    images: int = typer.Option(50, "--images", help="Sample street views to generate."),
    clues: int = typer.Option(30, "--clues", help="Sample clue texts to generate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated sample."),
) -> None:
    """Generate a sample, run the whole pipeline with demo models, evaluate, and write the threshold report."""
    from rich.console import Console

    from geocurate.cli.commands import exports as export_commands
    from geocurate.cli.commands import pipeline as pipeline_commands
    from geocurate.cli.commands import training as training_commands
    from geocurate.masking import mask_url
    from geocurate.cli.sample_data import describe, generate_sample
    from geocurate.settings import reload_settings

    started = time.perf_counter()
    os.environ["GEOCURATE_DEMO_MODELS"] = "true"
    for key, value in DEMO_SETTINGS.items():
        os.environ.setdefault(key, value)
    settings = reload_settings()
    console = Console()
    console.print(f"[bold yellow]{DEMO_BANNER}[/]")
    console.print(f"demo threshold {settings.threshold} (paper: 0.4), review band [{settings.review_band_low}, "
                  f"{settings.review_band_high}), SAM grid {settings.sam_points_per_side}², training preset "
                  f"{settings.train_preset}; store {mask_url(settings.database_url)}")

    sample = generate_sample(Path(settings.data_dir) / "sample", n_images=images, n_clues=clues, seed=seed)
    console.print(f"sample: {describe(sample)}")

    name = "demo-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    state = pipeline_commands.run_folder(sample.images_dir, metadata=sample.metadata_csv, clues=sample.clues_jsonl,
                                         export=name, train=True, source="demo")
    if state["status"] != "done":
        raise typer.Exit(pipeline_commands.EXIT_CODES.get(state["status"], 1))
    console.rule("evaluation on the export's test split")
    training_commands.evaluate(name, adapters=None, base_only=False, as_json=False)
    console.rule("threshold report")
    report_dir = Path(settings.data_dir) / "reports" / name
    export_commands.thresholds_report(out=report_dir, scorer_version=None)
    console.print(summary_table(settings.database_url, name, report_dir, time.perf_counter() - started))


def summary_table(url: str, export_name: str, report_dir: Path, seconds: float):
    from rich.table import Table
    from sqlalchemy import func, select

    from db import models as m
    from db.engine import session_scope

    table = Table(title=f"geocurate demo finished in {seconds:.0f} s")
    table.add_column("what")
    table.add_column("count", justify="right")
    with session_scope(url) as session:
        def count(model, *where) -> int:
            return session.scalar(select(func.count()).select_from(model).where(*where)) or 0

        rows = [
            ("images ingested", count(m.Image)),
            ("images scored", count(m.Image, m.Image.status == "scored")),
            ("inputs quarantined", count(m.Quarantine)),
            ("clues accepted", count(m.Clue, m.Clue.status == "accepted")),
            ("clues rejected (no place)", count(m.Clue, m.Clue.status == "rejected")),
            ("items in the review queue", count(m.ReviewTask, m.ReviewTask.state == "pending")),
        ]
        export = session.scalar(select(m.Export).where(m.Export.name == export_name))
        runs = session.scalars(select(m.TrainingRun).where(m.TrainingRun.export_id == export.id)).all() if export else []
    for what, n in rows:
        table.add_row(what, str(n))
    if export is not None:
        for split, n in sorted((export.counts or {}).get("location", {}).items()):
            table.add_row(f"export {export_name}: location/{split}", str(n))
        for part, n in sorted(((export.counts or {}).get("reasoning") or {}).items()):
            table.add_row(f"export {export_name}: reasoning/{part}", str(n))
        table.add_row("export folder", export.path)
    for run in runs:
        table.add_row(f"training {run.stage}", run_summary(run))
    table.add_row("threshold report", str(report_dir / "report.html"))
    return table


def run_summary(run) -> str:
    """A training run in one cell: status, how the loss moved over how many steps, where its adapter is."""
    metrics = run.metrics or {}
    parts = [run.status]
    if run.stage != "eval" and "first_loss" in metrics and "last_loss" in metrics:
        parts.append(f"loss {metrics['first_loss']:.2f} -> {metrics['last_loss']:.2f} in {metrics.get('steps')} steps")
    if run.stage == "eval" and metrics.get("n") is not None:
        parts.append(f"{metrics['n']} test images")
    if run.adapter_path:
        parts.append(run.adapter_path)
    return ", ".join(parts)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("demo")(demo)
