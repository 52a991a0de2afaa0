"""The curator's threshold report as files: PNG plots (matplotlib, headless) and one self-contained report.html
with the plots embedded, so it can be mailed or opened from any folder."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from curation.thresholds.stats import HISTOGRAM_BINS, PAPER_THRESHOLD, ThresholdStats
from curation.thresholds.weights import WeightFit

COUNTRY_PANELS = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _mark_paper(ax, best: float | None = None, version: float | None = None) -> None:
    ax.axvline(PAPER_THRESHOLD, color="crimson", linestyle="--", label=f"paper {PAPER_THRESHOLD}")
    if best is not None:
        ax.axvline(best, color="seagreen", linestyle=":", label=f"best F1 {best:.2f}")
    if version is not None and version != PAPER_THRESHOLD:
        ax.axvline(version, color="royalblue", linestyle="-.", label=f"this version {version:g}")


def version_line(stats: ThresholdStats) -> str:
    """The version's own rule in words: what it keeps and how many of its band's images wait for review."""
    if stats.rule is None:
        return "This version recorded no threshold or review band."
    rule = stats.rule
    return (f"This version keeps at ≥ {rule.threshold:g} ({stats.kept_at_rule:,} images) and sends "
            f"[{rule.review_low:g}, {rule.review_high:g}) to review ({stats.pending:,} still waiting for a reviewer).")


def plot_files(stats: ThresholdStats, out_dir: Path) -> dict[str, Path]:
    """Write the plots; returns {title: path}."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    written: dict[str, Path] = {}

    def save(fig, name: str, title: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written[title] = path

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(edges[:-1], stats.histogram, width=1 / HISTOGRAM_BINS, align="edge", color="steelblue")
    _mark_paper(ax, version=stats.rule.threshold if stats.rule else None)
    ax.set(xlabel="locatability", ylabel="images", title=f"Locatability, all images ({stats.total:,})")
    ax.legend()
    save(fig, "histogram.png", "Locatability histogram")

    countries = list(stats.histogram_by_country.items())[:COUNTRY_PANELS]
    cols = 4
    rows = max(1, -(-len(countries) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (country, counts) in zip(axes.flat, countries):
        ax.set_visible(True)
        ax.bar(edges[:-1], counts, width=1 / HISTOGRAM_BINS, align="edge", color="slategray")
        ax.axvline(PAPER_THRESHOLD, color="crimson", linestyle="--")
        ax.set_title(f"{country} ({int(counts.sum()):,})", fontsize=9)
    save(fig, "histogram_by_country.png", "Locatability by country")

    thresholds = [r.threshold for r in stats.rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if stats.labelled:
        for key, color in (("precision", "navy"), ("recall", "darkorange"), ("f1", "seagreen")):
            ax.plot(thresholds, [getattr(r, key) for r in stats.rows], marker="o", ms=3, color=color, label=key)
        ax.set_ylim(0, 1.05)
    else:
        ax.text(0.5, 0.5, "no human labels yet", ha="center", transform=ax.transAxes)
    _mark_paper(ax, stats.best_threshold, stats.rule.threshold if stats.rule else None)
    ax.set(xlabel="threshold", title=f"Keep vs human label ({stats.labelled} labelled images)")
    ax.legend(fontsize=8)
    save(fig, "precision_recall.png", "Precision, recall and F1 against human labels")

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], color="lightgray", label="calibrated")
    if stats.calibration:
        ax.plot([c.mean_score for c in stats.calibration], [c.locatable_fraction for c in stats.calibration],
                marker="o", color="navy", label="locatability")
    ax.set(xlabel="mean locatability in bin", ylabel="fraction labelled locatable", title="Calibration",
           xlim=(0, 1), ylim=(0, 1.05))
    ax.legend(fontsize=8)
    save(fig, "calibration.png", "Calibration")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, color in (("images", "steelblue"), ("countries", "darkorange"), ("cities", "seagreen")):
        values = np.asarray([getattr(r, key) for r in stats.rows], dtype=float)
        peak = values.max() if values.size and values.max() > 0 else 1.0
        ax.plot(thresholds, values / peak, marker="o", ms=3, color=color, label=f"{key} (max {int(peak):,})")
    _mark_paper(ax, version=stats.rule.threshold if stats.rule else None)
    ax.set(xlabel="threshold", ylabel="share of the largest", title="Dataset size vs threshold (quality vs quantity)",
           ylim=(0, 1.05))
    ax.legend(fontsize=8)
    save(fig, "dataset_size.png", "Dataset size vs threshold")
    return written


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]], highlight: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    marked = ' class="mark"'
    body = "".join(
        f"<tr{marked if i in highlight else ''}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def threshold_table_rows(stats: ThresholdStats) -> list[list[str]]:
    return [[f"{r.threshold:.2f}", f"{r.images:,}", str(r.countries), str(r.cities), _fmt(r.precision),
             _fmt(r.recall), _fmt(r.f1)] for r in stats.rows]


THRESHOLD_HEADERS = ["threshold", "images kept", "countries", "cities", "precision", "recall", "F1"]


def marked_thresholds(stats: ThresholdStats) -> set[float | None]:
    """Rows highlighted in the tables: the paper's threshold, the best F1 and the version's own."""
    return {PAPER_THRESHOLD, stats.best_threshold, stats.rule.threshold if stats.rule else None}


def write_html(stats: ThresholdStats, plots: dict[str, Path], out_dir: Path, fit: WeightFit | None = None,
               fit_note: str | None = None) -> Path:
    marked = {i for i, r in enumerate(stats.rows) if r.threshold in marked_thresholds(stats)}
    figures = "".join(
        f'<figure><img class="plot" alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for title, path in plots.items()
    )
    summary = (f"{stats.total:,} scored images; {stats.labelled} with a human label ({stats.positives} locatable). "
               + (f"Best F1 {stats.best_f1:.3f} at threshold {stats.best_threshold:.2f}; the paper uses "
                  f"{PAPER_THRESHOLD}." if stats.best_threshold is not None else "No human labels yet: no F1."))
    calibration = _table(
        ["score bin", "images", "mean score", "labelled locatable"],
        [[f"{c.low:.1f}–{c.high:.1f}", str(c.count), f"{c.mean_score:.3f}", f"{c.locatable_fraction:.2f}"]
         for c in stats.calibration],
    ) if stats.calibration else "<p>No human labels yet.</p>"
    if fit is not None:
        weights = (f"<p>Re-fitted on {fit.n_fit} labels, judged on {fit.n_holdout} held out: ROC AUC "
                   f"{fit.fitted_auc:.3f} (reference {fit.reference_auc:.3f}), F1 {fit.fitted_f1:.3f} (reference "
                   f"{fit.reference_f1:.3f}). The re-fitted weights are <b>{'better' if fit.better else 'not better'}"
                   f"</b> than the reference.</p>")
    else:
        weights = f"<p>{html.escape(fit_note or 'Not fitted.')}</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Threshold report – scorer {html.escape(stats.scorer_version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
tr.mark {{ background: #fff3c4; }} figure {{ margin: 1.5em 0; }} img.plot {{ max-width: 100%; }}
</style></head>
<body>
<h1>Threshold report</h1>
<p>Scorer version <code>{html.escape(stats.scorer_version)}</code>. {html.escape(summary)}</p>
<p>{html.escape(version_line(stats))}</p>
<h2>What each threshold keeps</h2>
{_table(THRESHOLD_HEADERS, threshold_table_rows(stats), marked)}
<h2>Plots</h2>
{figures}
<h2>Calibration</h2>
{calibration}
<h2>Re-fitted class weights</h2>
{weights}
<script>
// Lets a headless browser (and a curious curator) confirm that every embedded plot decoded.
window.addEventListener("load", () => {{
  const plots = Array.from(document.querySelectorAll("img.plot"));
  document.body.dataset.plotsTotal = plots.length;
  document.body.dataset.plotsLoaded = plots.filter(p => p.complete && p.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
