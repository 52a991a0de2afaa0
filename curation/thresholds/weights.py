"""Re-fit the 150 class weights from human labels: the loop that lets review improve scoring.

The locatability score is linear in the class ratios, so the fit is a logistic regression of the human label on the
ratios with non-negative coefficients (a class can only add evidence of place, as in the paper's weights) and an L2
penalty (few labels must not produce wild weights), solved by projected gradient descent. The penalty's
strength is chosen on a validation part of the fitting labels unless given; the coefficients are then scaled so the
largest is 1, like the reference. Whether they are better is judged on labels held out of the fit:
ranking quality (ROC AUC, independent of the threshold) and F1 at the threshold each weight set would pick on the
fitting labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from curation.decisions import DROP_LABELS, KEEP_LABELS, decided_images
from curation.locatability import NUM_CLASSES, REFERENCE_WEIGHTS
from curation.thresholds.stats import precision_recall_f1
from db.exports import stream

MIN_LABELS = 10


@dataclass
class WeightFit:
    weights: np.ndarray  # (150,), non-negative, max 1
    reference_auc: float
    fitted_auc: float
    reference_f1: float
    fitted_f1: float
    fitted_threshold: float  # best-F1 threshold for the fitted weights, chosen on the fitting labels
    n_fit: int
    n_holdout: int

    @property
    def better(self) -> bool:
        """The re-fitted weights rank held-out labels better than the reference weights."""
        return self.fitted_auc > self.reference_auc

    def save(self, path: Path) -> Path:
        """A JSON list of 150 weights: point `class_weights_path` at it to score with them."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([round(float(w), 8) for w in self.weights]) + "\n")
        return path


def reference_weights() -> np.ndarray:
    return np.asarray(REFERENCE_WEIGHTS, dtype=np.float64)


def labelled_class_ratios(session: Session, scorer_version: str) -> tuple[np.ndarray, np.ndarray]:
    """(ratios (n × 150), locatable (n,)) for the images humans labelled under this scorer version."""
    base = decided_images(scorer_version, 0.0, kept_only=False, require_location=False)
    c = base.selected_columns
    stmt = base.with_only_columns(c.class_ratios, c.human_label).where(
        c.human_label.in_(sorted(KEEP_LABELS | DROP_LABELS))).order_by(c.sha256)
    rows, labels = [], []
    for ratios, label in stream(session, stmt):
        vector = np.zeros(NUM_CLASSES)
        for index, fraction in (ratios or {}).items():
            if 0 <= int(index) < NUM_CLASSES:
                vector[int(index)] = float(fraction)
        rows.append(vector)
        labels.append(label in KEEP_LABELS)
    return np.asarray(rows).reshape(-1, NUM_CLASSES), np.asarray(labels, dtype=bool)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random locatable image outscores a random non-locatable one (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    values = np.concatenate([pos, neg])
    for value in np.unique(values):  # average ranks of ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _best_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """Over the score's own percentiles: re-fitted weights need not live on the reference's 0.05 grid."""
    candidates = np.unique(np.quantile(scores, np.linspace(0, 1, 101)))
    return float(max(candidates, key=lambda t: (precision_recall_f1(scores, positive, t)[2], -abs(t - 0.4))))


def _fit_logistic_nonnegative(x: np.ndarray, y: np.ndarray, l2: float, steps: int) -> np.ndarray:
    w, b = np.zeros(x.shape[1]), 0.0
    target = y.astype(np.float64)
    step = 1.0 / (0.25 * float(np.linalg.norm(x, 2)) ** 2 / len(x) + 2 * l2 + 1e-12)  # 1 / Lipschitz constant
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        error = p - target
        w = np.maximum(w - step * (x.T @ error / len(x) + 2 * l2 * w), 0.0)
        b -= step * float(error.mean())
    return w


L2_CANDIDATES = (1e-1, 1e-2, 1e-3, 1e-4)


def _stratified_holdout(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A mask holding out `share` of each kind of label (at least one of each)."""
    held = np.zeros(len(labels), dtype=bool)
    for kind in (True, False):
        members = rng.permutation(np.flatnonzero(labels == kind))
        held[members[: max(1, int(round(share * len(members))))]] = True
    return held


def _choose_l2(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, share: float, steps: int) -> float:
    """The candidate penalty whose fit ranks a validation part of the fitting labels best (ties: the stronger)."""
    if min(int(y.sum()), int((~y).sum())) < 2:
        return L2_CANDIDATES[1]
    val = _stratified_holdout(y, share, rng)
    scored = [(roc_auc(x[val] @ _fit_logistic_nonnegative(x[~val], y[~val], l2, steps), y[val]), l2)
              for l2 in L2_CANDIDATES]
    return max(scored, key=lambda pair: (np.nan_to_num(pair[0]), pair[1]))[1]


def fit_class_weights(ratios: np.ndarray, locatable: np.ndarray, reference: np.ndarray | None = None,
                      l2: float | None = None, holdout: float = 0.3, seed: int = 0, steps: int = 3000) -> WeightFit:
    """Re-estimate the class weights from labelled images and compare them with `reference` on a held-out part.
    Raises ValueError when there are too few labels, or only one kind, to fit and to judge."""
    ratios, locatable = np.asarray(ratios, dtype=np.float64), np.asarray(locatable, dtype=bool)
    reference = reference_weights() if reference is None else np.asarray(reference, dtype=np.float64)
    if len(ratios) < MIN_LABELS or locatable.all() or not locatable.any():
        raise ValueError(f"need at least {MIN_LABELS} human labels of both kinds to re-fit the weights "
                         f"(have {int(locatable.sum())} locatable, {int((~locatable).sum())} not)")
    rng = np.random.default_rng(seed)
    test = _stratified_holdout(locatable, holdout, rng)
    fit_x, fit_y, test_x, test_y = ratios[~test], locatable[~test], ratios[test], locatable[test]

    if l2 is None:
        l2 = _choose_l2(fit_x, fit_y, rng, holdout, steps)
    coefficients = _fit_logistic_nonnegative(fit_x, fit_y, l2, steps)
    weights = coefficients / coefficients.max() if coefficients.max() > 0 else reference.copy()

    def judged(w: np.ndarray) -> tuple[float, float, float]:
        threshold = _best_threshold(fit_x @ w, fit_y)
        return roc_auc(test_x @ w, test_y), precision_recall_f1(test_x @ w, test_y, threshold)[2], threshold

    ref_auc, ref_f1, _ = judged(reference)
    fit_auc, fit_f1, fit_threshold = judged(weights)
    return WeightFit(weights=weights, reference_auc=ref_auc, fitted_auc=fit_auc, reference_f1=ref_f1,
                     fitted_f1=fit_f1, fitted_threshold=fit_threshold, n_fit=int((~test).sum()),
                     n_holdout=int(test.sum()))
