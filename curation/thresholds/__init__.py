"""Threshold tuning for curators: what each locatability threshold keeps, how "keep" agrees with human review,
and a re-fit of the class weights from those labels (`geocurate thresholds report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curation.thresholds.stats import PAPER_THRESHOLD, THRESHOLDS, ThresholdStats, collect
from curation.thresholds.weights import WeightFit, fit_class_weights, labelled_class_ratios, roc_auc


@dataclass
class ThresholdReport:
    stats: ThresholdStats
    out_dir: Path
    html: Path
    plots: dict[str, Path]
    fit: WeightFit | None
    fit_note: str | None


def build_report(session_url: str, out_dir: Path | None = None, scorer_version: str | None = None, seed: int = 0, *,
                 reports_dir: Path | None = None) -> ThresholdReport:
    """Gather the statistics, re-fit the weights when labels allow, and write the plots and report.html into
    `out_dir`, or else into `reports_dir`/thresholds-<scorer version> (the CLI's reports_dir: data_dir/reports)."""
    if out_dir is None and reports_dir is None:
        raise ValueError("build_report needs out_dir or reports_dir: where to write the report")
    from curation.thresholds.render import plot_files, write_html
    from db.engine import session_scope
    from db.exports import latest_scorer_version
    from geocurate.errors import UserError

    with session_scope(session_url) as session:
        scorer_version = scorer_version or latest_scorer_version(session)
        if not scorer_version:
            raise UserError("the store has no scores yet; run `geocurate score` first")
        stats = collect(session, scorer_version)
        if not stats.total:
            raise UserError(f"no scores under scorer version {scorer_version!r}")
        ratios, locatable = labelled_class_ratios(session, scorer_version)
    fit, note = None, None
    try:
        fit = fit_class_weights(ratios, locatable, seed=seed)
    except ValueError as exc:
        note = str(exc)
    out_dir = Path(out_dir) if out_dir is not None else Path(reports_dir) / f"thresholds-{scorer_version}"
    plots = plot_files(stats, out_dir)
    page = write_html(stats, plots, out_dir, fit, note)
    return ThresholdReport(stats=stats, out_dir=out_dir, html=page, plots=plots, fit=fit, fit_note=note)


__all__ = ["PAPER_THRESHOLD", "THRESHOLDS", "ThresholdReport", "ThresholdStats", "WeightFit", "build_report",
           "collect", "fit_class_weights", "labelled_class_ratios", "roc_auc"]
