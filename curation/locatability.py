"""The GeoReasoner locatability formula: Σ over the 150 ADE20K classes of weight[class] × pixel fraction of the class.

The class names and the paper authors' weights ship inside the package (curation/data/ade20k_locatability.json) so a
score never depends on a file outside the installed code; a curator may replace the weights through
`class_weights_path`, which changes the scorer version. This module is the one reader of that file: scoring, review
tasks, exports and the weight fit all take the class names and weights from here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

ROUNDING_SLACK = 1e-6  # ratios are fractions of a pixel count computed in float32 by the segmenters
TOP_CLASSES = 5  # classes named on a score (CLI output, review tasks)


def _reference() -> dict:
    return json.loads(resources.files("curation").joinpath("data/ade20k_locatability.json").read_text())


_REFERENCE = _reference()
ADE20K_CLASSES: tuple[str, ...] = tuple(_REFERENCE["classes"])
REFERENCE_WEIGHTS: tuple[float, ...] = tuple(float(w) for w in _REFERENCE["weights"])
WORKED_EXAMPLE: dict = _REFERENCE["worked_example"]
NUM_CLASSES = len(ADE20K_CLASSES)
SHORT_NAMES: tuple[str, ...] = tuple(name.split(",")[0].strip() for name in ADE20K_CLASSES)


def short_name(class_index: int) -> str:
    """First synonym of an ADE20K class ("road, route" -> "road"): what prompts and reports show."""
    return SHORT_NAMES[class_index]


def top_classes(class_ratios: Mapping[int | str, float] | None, n: int = TOP_CLASSES) -> list[tuple[str, float]]:
    """(short name, pixel fraction) of the n largest classes, largest first; equal fractions in class order, so the
    CLI and the review task of one image name the same classes. Keys may be strings (ratios read back from JSON);
    an index outside the table is named by its number rather than failing a whole push."""
    ranked = sorted(((int(k), float(v)) for k, v in (class_ratios or {}).items()), key=lambda item: (-item[1], item[0]))
    return [(SHORT_NAMES[i] if 0 <= i < NUM_CLASSES else str(i), ratio) for i, ratio in ranked[:n]]


def validate_ratios(class_ratios: Mapping[int | str, float]) -> dict[int, float]:
    """Class ratios as {int index: float}; raises ValueError naming the first problem found."""
    ratios: dict[int, float] = {}
    for key, value in class_ratios.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"class ratio key {key!r} is not an ADE20K class index (0..{NUM_CLASSES - 1})") from None
        if not 0 <= index < NUM_CLASSES:
            raise ValueError(f"unknown ADE20K class index {index}: expected 0..{NUM_CLASSES - 1}")
        ratio = float(value)
        if not math.isfinite(ratio) or ratio < 0:
            raise ValueError(f"ratio of class {index} ({short_name(index)}) is {value!r}: must be a fraction >= 0")
        ratios[index] = ratios.get(index, 0.0) + ratio
    total = math.fsum(ratios.values())
    if total > 1 + ROUNDING_SLACK:
        raise ValueError(f"class ratios sum to {total:.6f}: fractions of one image's pixels cannot exceed 1")
    return ratios


def validate_weights(weights: Sequence[float], origin: str = "class weights") -> tuple[float, ...]:
    if len(weights) != NUM_CLASSES:
        raise ValueError(f"{origin}: expected {NUM_CLASSES} weights (one per ADE20K class), got {len(weights)}")
    checked = []
    for index, weight in enumerate(weights):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{origin}: weight {index} ({short_name(index)}) is {weight!r}, not a finite number")
        checked.append(float(weight))
    return tuple(checked)


def locatability(class_ratios: Mapping[int | str, float], weights: Sequence[float] = REFERENCE_WEIGHTS) -> float:
    """Σ weight[class] × ratio[class]; unlabeled pixels (absent from the mapping) add nothing."""
    ratios = validate_ratios(class_ratios)
    if weights is not REFERENCE_WEIGHTS:
        weights = validate_weights(weights)
    return float(sum(weights[index] * ratio for index, ratio in sorted(ratios.items())))


def load_weights(settings) -> list[float]:
    """The weights a scorer uses: the file named by `class_weights_path` (a JSON list of 150 numbers, or an object
    with a "weights" list such as the shipped reference file), else the paper's reference weights."""
    path: Path | None = settings.class_weights_path
    if path is None:
        return list(REFERENCE_WEIGHTS)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"class weights file {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("weights", [])
    if not isinstance(data, list):
        raise ValueError(f"class weights file {path}: expected a JSON list of {NUM_CLASSES} numbers")
    return list(validate_weights(data, origin=f"class weights file {path}"))


def weights_digest(weights: Sequence[float]) -> str:
    """Short, order-sensitive fingerprint of a weight vector: part of the scorer version."""
    return hashlib.sha256(json.dumps([float(w) for w in weights]).encode()).hexdigest()[:12]
