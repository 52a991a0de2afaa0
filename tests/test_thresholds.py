"""Threshold report: counts per threshold with human labels winning, P/R/F1 and the best threshold, calibration,
the weight re-fit, the rendered report (opened in headless Chromium) and the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curation.thresholds import build_report, collect, fit_class_weights, roc_auc
from db import models as m
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.scores import add_scores

# (country, city, locatability, human label)
ROWS = [
    ("PL", "Kraków", 0.10, "not_locatable"),
    ("PL", "Kraków", 0.30, "locatable"),
    ("PL", "Gdańsk", 0.35, "not_locatable"),
    ("DE", "Berlin", 0.45, "locatable"),
    ("DE", "Berlin", 0.55, "not_locatable"),
    ("DE", "Bonn", 0.65, "locatable"),
    ("FR", "Paris", 0.85, "locatable"),
    ("FR", None, 0.20, None),
    ("FR", None, 0.42, None),
    ("JP", "Tokyo", 0.90, "unusable"),
]


def seed_labelled_store(url: str, version: str = "v1") -> None:
    images = [dict(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"/img/{i}.jpg", lat=1.0 + i, lon=2.0,
                   country_code=c, city=city) for i, (c, city, _, _) in enumerate(ROWS)]
    with session_scope(url) as s:
        add_images(s, images)
        ids = ids_by_sha(s, [r["sha256"] for r in images])
        image_ids = [ids[r["sha256"]] for r in images]
        add_scores(s, [dict(image_id=i, scorer_version=version, locatability=loc, class_ratios={"6": loc},
                            decision="keep") for i, (_, _, loc, _) in zip(image_ids, ROWS)])
        s.add_all([m.ReviewTask(item_kind="image", item_id=i, state="done", final_label=label)
                   for i, (_, _, _, label) in zip(image_ids, ROWS) if label])


def expected_prf(threshold: float) -> tuple[float, float, float]:
    labelled = [(loc, label == "locatable") for _, _, loc, label in ROWS if label]
    tp = sum(1 for loc, pos in labelled if loc >= threshold and pos)
    kept = sum(1 for loc, _ in labelled if loc >= threshold)
    positives = sum(1 for _, pos in labelled if pos)
    p = tp / kept if kept else 0.0
    r = tp / positives
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def test_stats_per_threshold(store_url):
    seed_labelled_store(store_url)
    with session_scope(store_url) as s:
        stats = collect(s, "v1")
    assert stats.total == len(ROWS) and stats.labelled == 8 and stats.positives == 4
    assert int(stats.histogram.sum()) == len(ROWS) and set(stats.histogram_by_country) == {"PL", "DE", "FR", "JP"}
    at = {r.threshold: r for r in stats.rows}
    # at 0.4: human "locatable" keep (0.30, 0.45, 0.65, 0.85), unlabelled 0.42 keeps; 0.55 and 0.90 dropped by humans
    assert at[0.4].images == 5 and at[0.4].countries == 3 and at[0.4].cities == 4
    # at 0.95 only the human-kept remain: the label wins over the score both ways
    assert at[0.95].images == 4 and at[0.05].images == 5 + 1  # + the unlabelled 0.20
    for t in (0.05, 0.3, 0.4, 0.5, 0.7, 0.95):
        assert (at[t].precision, at[t].recall, at[t].f1) == pytest.approx(expected_prf(t))
    best = max(stats.rows, key=lambda r: r.f1)
    assert stats.best_f1 == pytest.approx(best.f1) and stats.best_threshold in {0.3, 0.05, 0.1, 0.15, 0.2, 0.25}
    assert sum(c.count for c in stats.calibration) == 8


def test_roc_auc():
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


def synthetic_labels(n: int = 400, seed: int = 0):
    """Humans call an image locatable when classes 43 (signboard) and 6 (road) cover enough of it."""
    rng = np.random.default_rng(seed)
    ratios = rng.dirichlet(np.ones(150) * 0.05, size=n)
    truth = np.zeros(150)
    truth[43], truth[6] = 1.0, 0.6
    evidence = ratios @ truth
    return ratios, evidence > np.quantile(evidence, 0.6)


def test_fit_class_weights_beats_a_wrong_reference():
    ratios, locatable = synthetic_labels()
    wrong = np.zeros(150)
    wrong[2] = 1.0  # "sky": no evidence of place at all
    fit = fit_class_weights(ratios, locatable, reference=wrong, seed=0)
    assert fit.weights.shape == (150,) and fit.weights.min() >= 0 and fit.weights.max() == pytest.approx(1.0)
    assert set(np.argsort(-fit.weights)[:2]) == {6, 43}  # road and signboard, the classes the labels depend on
    assert fit.better and fit.fitted_auc > 0.9 > fit.reference_auc
    assert fit.n_fit + fit.n_holdout == len(ratios)


def test_fit_class_weights_needs_both_kinds_of_labels(tmp_path):
    ratios, locatable = synthetic_labels(n=30)
    with pytest.raises(ValueError, match="both kinds"):
        fit_class_weights(ratios, np.ones(30, dtype=bool))
    fit = fit_class_weights(ratios, locatable)
    saved = json.loads(fit.save(tmp_path / "w.json").read_text())
    assert len(saved) == 150 and max(saved) == pytest.approx(1.0)


def test_report_files(sqlite_store, tmp_path):
    seed_labelled_store(sqlite_store)
    report = build_report(sqlite_store, tmp_path / "report")
    assert report.html.exists() and len(report.plots) == 5
    for path in report.plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.html.read_text()
    assert page.count('src="data:image/png;base64,') == 5 and "<img" in page and "http" not in page.split("<body>")[1]
    assert report.fit_note and "need at least" in report.fit_note  # 8 labels: too few to re-fit


def test_report_html_plots_load_in_headless_chromium(sqlite_store, tmp_path):
    from tests.conftest import unavailable

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        unavailable("chromium", "install the Debian package `chromium` (make chromium)")
    seed_labelled_store(sqlite_store)
    report = build_report(sqlite_store, tmp_path / "report")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
         report.html.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stderr[-2000:]
    loaded = re.search(r'data-plots-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-plots-total="(\d+)"', body.group(0))
    assert loaded and total, body.group(0)
    assert int(total.group(1)) == 5 and int(loaded.group(1)) == 5


def test_thresholds_and_export_cli(store_url, tmp_path):
    from geocurate.cli import app

    seed_labelled_store(store_url)
    runner = CliRunner()
    result = runner.invoke(app, ["thresholds", "report", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "0.40" in result.output and (tmp_path / "r" / "report.html").exists()
    result = runner.invoke(app, ["export", "cli-export", "--threshold", "0.4", "--no-dedup",
                                 "--split", "0.5/0.25/0.25"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((Path("exports") / "cli-export" / "manifest.json").read_text())
    assert manifest["parameters"]["split"] == [0.5, 0.25, 0.25]
    assert sum(manifest["counts"]["location"].values()) == 5  # kept at 0.4, as in test_stats_per_threshold
