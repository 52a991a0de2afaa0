"""Evaluation of a trained model (or the plain base model, the paper's comparison) on an export's test split.

The metrics are recorded as an `eval` training_runs row, and attached under "test" to the location run that made
the adapters, so a run's row holds both how it trained and how well it answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geocurate.errors import UserError
from training.geo import THRESHOLDS_KM, geo_metrics


def truth_rows(examples, predictions) -> list[dict[str, Any]]:
    return [
        dict(truth_code=e.country_code, truth_city=e.city, truth_lat=e.lat, truth_lon=e.lon, pred_code=p.country_code,
             pred_city=p.city, parsed=p.parsed)
        for e, p in zip(examples, predictions)
    ]


def evaluate_export(export_dir, adapters_dir=None, base_only: bool = False, *, settings, split: str = "test",
                    record: bool = True) -> dict[str, Any]:
    """Predict every image of the split and score the answers; returns the metrics (see training.geo). The model,
    device and the store the evaluation is recorded in are those of `settings`."""
    from training.data import load_examples
    from training.inference import load_geo_model
    from training.stages import quarantine_rejects

    export_dir = Path(export_dir).resolve()
    if not export_dir.is_dir():
        raise UserError(f"export folder {export_dir} does not exist")
    examples, rejected = load_examples(export_dir, "location", split)
    quarantine_rejects(rejected, settings.database_url)
    if not examples:
        raise UserError(f"no usable examples in the {split} split of {export_dir}")
    adapters_dir = Path(adapters_dir or settings.adapters_dir).resolve()
    geo_model = load_geo_model(adapters_dir, settings, base_only)
    predictions = geo_model.predict([export_dir / e.image for e in examples])
    metrics = geo_metrics(truth_rows(examples, predictions))
    metrics.update(
        split=split, model="base" if base_only else "base+" + "+".join(Path(p).name for p in geo_model.adapters),
        rejected=len(rejected),
        failures=[dict(id=e.id, raw=p.raw[:200], error=p.error) for e, p in zip(examples, predictions) if not p.parsed][:20],
    )
    if record:
        metrics["run_id"] = record_evaluation(settings.database_url, export_dir, adapters_dir, base_only, metrics)
    return metrics


def record_evaluation(session_url: str, export_dir: Path, adapters_dir: Path, base_only: bool,
                      metrics: dict[str, Any]) -> int:
    from db import training as runs
    from db.engine import session_scope
    from training.stages import adapter_dir

    location = str(adapter_dir(adapters_dir, "location"))
    with session_scope(session_url) as session:
        run_id = runs.start_run(
            session, stage="eval", export_path=str(export_dir), export_id=runs.export_id_for_path(session, export_dir),
            config={"base_only": base_only, "adapters_dir": str(adapters_dir)},
            adapter_path=None if base_only else str(adapters_dir),
        )
        runs.finish_run(session, run_id, metrics)
        trained = None if base_only else runs.latest_done_run(session, stage="location", adapter_path=location)
        if trained is not None:
            runs.add_metrics(session, trained.id, "base_test" if base_only else "test", metrics)
    return run_id


def format_table(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows in reading order, for the CLI's table."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    rows = [
        ("model", str(metrics.get("model"))),
        ("examples", str(metrics["n"])),
        ("country accuracy", pct(metrics["country_accuracy"])),
        ("city accuracy", pct(metrics["city_accuracy"])),
    ]
    rows += [(f"within {t} km", pct(metrics["within_km"][str(t)])) for t in THRESHOLDS_KM]
    rows += [
        ("median error", "n/a" if metrics["median_km"] is None else f"{metrics['median_km']:,.1f} km"),
        ("mean GeoGuessr score", "n/a" if metrics["mean_geoguessr"] is None else f"{metrics['mean_geoguessr']:,.1f}"),
        ("parse failures", pct(metrics["parse_failure_rate"])),
    ]
    return rows
