"""What a threshold does to one scorer version's images, gathered in one streaming pass over the store.

Only aggregates are kept (histograms, per-place maxima, the few human-labelled rows), so the report reads a million
scores in constant memory. "Kept at t" applies the final decision (curation.decisions): a human label wins at
every threshold, quarantined images never count. The version's own threshold and review band (stored with it) are
reported beside the sweep: what this version keeps, and how many of its band's images still wait for a reviewer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from curation.decisions import DROP_LABELS, KEEP_LABELS, DecisionRule, decided_images, pending_images
from db.scores import scorer_params
from db.exports import stream

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95
PAPER_THRESHOLD = 0.4
HISTOGRAM_BINS = 20
CALIBRATION_BINS = 10


@dataclass
class ThresholdRow:
    threshold: float
    images: int
    countries: int
    cities: int
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


@dataclass
class CalibrationRow:
    low: float
    high: float
    count: int
    mean_score: float
    locatable_fraction: float


@dataclass
class ThresholdStats:
    scorer_version: str
    total: int
    histogram: np.ndarray  # counts over HISTOGRAM_BINS equal bins of [0, 1] (scores above 1 in the last)
    histogram_by_country: dict[str, np.ndarray]
    rows: list[ThresholdRow]
    labelled: int
    positives: int
    best_threshold: float | None
    best_f1: float | None
    calibration: list[CalibrationRow] = field(default_factory=list)
    rule: DecisionRule | None = None  # the version's threshold and band (None: registered without them)
    kept_at_rule: int | None = None  # images the version's threshold keeps (human labels applied)
    pending: int | None = None  # images in the version's band whose review is still open


def _bin(values: np.ndarray, bins: int) -> np.ndarray:
    return np.clip((values * bins).astype(int), 0, bins - 1)


def precision_recall_f1(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Of "keep" (score ≥ threshold) against the human label; 0 where undefined (nothing kept, no positives)."""
    kept = scores >= threshold
    tp = int(np.sum(kept & positive))
    precision = tp / int(kept.sum()) if kept.any() else 0.0
    recall = tp / int(positive.sum()) if positive.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def calibration_table(scores: np.ndarray, positive: np.ndarray, bins: int = CALIBRATION_BINS) -> list[CalibrationRow]:
    """Per score bin: how often humans call the images in it locatable. A calibrated score reads as a probability."""
    index = _bin(scores, bins)
    rows = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        if n:
            rows.append(CalibrationRow(b / bins, (b + 1) / bins, n, float(scores[members].mean()),
                                       float(positive[members].mean())))
    return rows


def collect(session: Session, scorer_version: str) -> ThresholdStats:
    base = decided_images(scorer_version, 0.0, kept_only=False, require_location=False)
    c = base.selected_columns
    stmt = base.with_only_columns(c.locatability, c.country_code, c.city, c.human_label)

    thresholds = np.asarray(THRESHOLDS)
    histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    by_country: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))
    kept_levels = np.zeros(len(THRESHOLDS) + 1, dtype=np.int64)  # level L: kept at THRESHOLDS[:L]
    country_level: dict[str, int] = {}
    city_level: dict[tuple[str, str], int] = {}
    labelled_scores, labelled_positive = [], []
    total = 0
    rule = DecisionRule.from_params(scorer_params(session, scorer_version))
    kept_at_rule = 0
    for locatability, country, city, label in stream(session, stmt):
        total += 1
        score = float(locatability)
        if rule is not None and label not in DROP_LABELS and (label in KEEP_LABELS or score >= rule.threshold):
            kept_at_rule += 1
        b = min(max(int(score * HISTOGRAM_BINS), 0), HISTOGRAM_BINS - 1)
        histogram[b] += 1
        country = (country or "??").upper()
        by_country[country][b] += 1
        if label in KEEP_LABELS:
            level = len(THRESHOLDS)
        elif label in DROP_LABELS:
            level = 0
        else:
            level = int(np.searchsorted(thresholds, score, side="right"))
        if label in KEEP_LABELS or label in DROP_LABELS:
            labelled_scores.append(score)
            labelled_positive.append(label in KEEP_LABELS)
        kept_levels[level] += 1
        if level > country_level.get(country, -1):
            country_level[country] = level
        if city:
            key = (country, city.strip().lower())
            if level > city_level.get(key, -1):
                city_level[key] = level

    kept_at = np.cumsum(kept_levels[::-1])[::-1]  # kept_at[j]: images at level ≥ j; kept at THRESHOLDS[k] is j = k+1
    country_levels = np.asarray(list(country_level.values()) or [0])
    city_levels = np.asarray(list(city_level.values()) or [0])
    scores = np.asarray(labelled_scores, dtype=np.float64)
    positive = np.asarray(labelled_positive, dtype=bool)
    rows = []
    for k, t in enumerate(THRESHOLDS):
        row = ThresholdRow(t, int(kept_at[k + 1]), int((country_levels > k).sum()), int((city_levels > k).sum()))
        if len(scores):
            row.precision, row.recall, row.f1 = precision_recall_f1(scores, positive, t)
        rows.append(row)
    best = max(rows, key=lambda r: (r.f1, -abs(r.threshold - PAPER_THRESHOLD))) if len(scores) else None
    return ThresholdStats(
        scorer_version=scorer_version, total=total, histogram=histogram,
        histogram_by_country=dict(sorted(by_country.items(), key=lambda kv: -int(kv[1].sum()))), rows=rows,
        labelled=len(scores), positives=int(positive.sum()), best_threshold=best.threshold if best else None,
        best_f1=best.f1 if best else None, calibration=calibration_table(scores, positive) if len(scores) else [],
        rule=rule, kept_at_rule=kept_at_rule if rule is not None else None,
        pending=int(session.execute(pending_images(scorer_version, rule.band, rule.threshold,
                                                   require_location=False)).one()[0] or 0) if rule else None,
    )
