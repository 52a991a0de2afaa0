"""Evaluation of a trained model (or the plain base model, the paper's comparison) on an export's test split.

The adapters are the export's own set, checked against the runs that wrote them (training/adapters.py). The metrics
are recorded as an `eval` training_runs row, and attached under "test" to the location run that made the adapters,
so a run's row holds both how it trained and how well it answers. Every answer is written, next to its truth, to
`<data_dir>/evals/<export>/run-<id>-<split>.jsonl` (path in the metrics as `predictions`), so the metrics can be
recomputed and a surprising number traced to the answers behind it.
"""

from __future__ import annotations

import json
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


def prediction_lines(examples, predictions) -> list[dict[str, Any]]:
    """One record per test example: its id and image, the truth, and the answer (what geo_metrics reads, plus the
    country name, reasons, raw text and error)."""
    return [
        dict(id=e.id, image=e.image, **row, country=p.country, reasons=p.reasons, raw=p.raw, error=p.error)
        for e, p, row in zip(examples, predictions, truth_rows(examples, predictions))
    ]


def evaluate_export(export_dir, adapters_dir=None, base_only: bool = False, *, settings, split: str = "test",
                    record: bool = True) -> dict[str, Any]:
    """Predict every image of the split and score the answers; returns the metrics (see training.geo). The model,
    device and the store the evaluation is recorded in are those of `settings`; the adapters are the export's own
    set unless `adapters_dir` names a set folder, and must belong to this export (AdapterMismatch otherwise)."""
    from training.adapters import export_name_of
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
    export_name = export_name_of(export_dir)
    geo_model = load_geo_model(export_name, settings, adapters_dir, base_only)
    predictions = geo_model.predict([export_dir / e.image for e in examples])
    metrics = geo_metrics(truth_rows(examples, predictions))
    metrics.update(
        split=split, model="base" if base_only else "base+" + "+".join(Path(p).name for p in geo_model.adapters),
        rejected=len(rejected),
        adapter_runs={check.stage: check.run_id for check in geo_model.checks},
        failures=[dict(id=e.id, raw=p.raw[:200], error=p.error) for e, p in zip(examples, predictions) if not p.parsed][:20],
    )
    if record:
        metrics["run_id"] = record_evaluation(
            settings, export_dir, export_name, geo_model, base_only, metrics, prediction_lines(examples, predictions))
    return metrics


def predictions_file(data_dir: Path, export_name: str, run_id: int, split: str) -> Path:
    return Path(data_dir).resolve() / "evals" / export_name / f"run-{run_id}-{split}.jsonl"


def record_evaluation(settings, export_dir: Path, export_name: str, geo_model, base_only: bool,
                      metrics: dict[str, Any], lines: list[dict[str, Any]]) -> int:
    """The eval run's row (metrics, path of its predictions file), and the metrics attached to the location run
    whose adapter was evaluated (found by the checked run id, never by folder: folders are reused)."""
    from db import training as runs
    from db.engine import session_scope

    adapter_set = str(Path(geo_model.adapters[0]).parent) if geo_model.adapters else None
    with session_scope(settings.database_url) as session:
        run_id = runs.start_run(
            session, stage="eval", export_path=str(export_dir), export_id=runs.export_id_for_path(session, export_dir),
            config={"base_only": base_only, "adapters_dir": adapter_set}, adapter_path=adapter_set,
            export_name=export_name, base_model=geo_model.base_path,
        )
    path = predictions_file(settings.data_dir, export_name, run_id, metrics["split"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    metrics.update(predictions=str(path), run_id=run_id)
    location = next((check.run_id for check in geo_model.checks if check.stage == "location"), None)
    with session_scope(settings.database_url) as session:
        runs.finish_run(session, run_id, metrics)
        if base_only:  # the paper's comparison, kept beside the export's latest trained location run
            trained = runs.latest_done_run(session, stage="location", export_name=export_name)
            location = trained.id if trained is not None else None
        if location is not None:
            runs.add_metrics(session, location, "base_test" if base_only else "test", metrics)
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
