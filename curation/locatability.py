"""The GeoReasoner locatability formula: Σ over the 150 ADE20K classes of weight[class] × pixel fraction of the class.

The class names and the paper authors' weights ship inside the package (curation/data/ade20k_locatability.json) so a
score never depends on a file outside the installed code; a curator may replace the weights through
`class_weights_path`, which changes the scorer version. This module is the one reader of that file: scoring, review
tasks, exports and the weight fit all take the class names and weights from here.
"""

from __future__ import annotations

import difflib
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
SHORT_NAMES_LOWER: tuple[str, ...] = tuple(name.lower() for name in SHORT_NAMES)


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
    """The weights a scorer uses: the file named by `class_weights_path` (see `weights_from_json`), else the
    paper's reference weights."""
    path: Path | None = settings.class_weights_path
    if path is None:
        return list(REFERENCE_WEIGHTS)
    return list(read_weights_file(path))


def read_weights_file(path: Path | str) -> tuple[float, ...]:
    """A weights file as 150 floats; ValueError naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"class weights file {path}: {exc}") from None
    return weights_from_json(data, origin=f"class weights file {path}")


def _class_index() -> tuple[dict[str, int], dict[str, list[str]]]:
    """Every name a curator may use for a class: the full ADE20K name ("road, route"), its first synonym ("road")
    and any other synonym that names one class only ("route"). Returns that index and the synonyms shared by
    several classes ("ground" -> the full names of its classes), which are refused as ambiguous."""
    owners: dict[str, list[int]] = {}
    for i, full in enumerate(ADE20K_CLASSES):
        for synonym in dict.fromkeys(s.strip().lower() for s in full.split(",")):
            owners.setdefault(synonym, []).append(i)
    index = {name: classes[0] for name, classes in owners.items() if len(classes) == 1}
    index.update({full.lower(): i for i, full in enumerate(ADE20K_CLASSES)})
    index.update({name.lower(): i for i, name in enumerate(SHORT_NAMES)})
    shared = {name: [ADE20K_CLASSES[i] for i in classes] for name, classes in owners.items()
              if len(classes) > 1 and name not in index}
    return index, shared


CLASS_INDEX, AMBIGUOUS_NAMES = _class_index()


def weights_from_json(data: object, origin: str = "class weights") -> tuple[float, ...]:
    """Class weights from their JSON forms:
    - an object by ADE20K class name, `{"road": 1.0, "sky": 0.02}`: the named classes get these weights, every
      other class keeps the paper's reference weight, so a curator writes only what they change; names are matched
      without case, by full name or synonym, and an unknown name is refused with the closest known ones;
    - a list of 150 numbers in ADE20K order (what `geocurate thresholds fit-weights` writes);
    - an object with a "weights" list (the shipped reference file)."""
    if isinstance(data, dict) and isinstance(data.get("weights"), list):
        data = data["weights"]
    if isinstance(data, list):
        return validate_weights(data, origin)
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a JSON object of weights by ADE20K class name "
                         f"({{\"road\": 1.0, \"sky\": 0.02}}) or a list of {NUM_CLASSES} numbers")
    weights = list(REFERENCE_WEIGHTS)
    named: dict[int, str] = {}
    for key, weight in data.items():
        index = CLASS_INDEX.get(str(key).strip().lower())
        if index is None and str(key).strip().lower() in AMBIGUOUS_NAMES:
            classes = AMBIGUOUS_NAMES[str(key).strip().lower()]
            raise ValueError(f"{origin}: {key!r} names {len(classes)} ADE20K classes "
                             f"({'; '.join(repr(c) for c in classes)}): use the first name of the one you mean")
        if index is None:
            close = difflib.get_close_matches(str(key).strip().lower(), SHORT_NAMES_LOWER, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                "; class names are the ADE20K names (curation.locatability.SHORT_NAMES)"
            raise ValueError(f"{origin}: unknown ADE20K class {key!r}{hint}")
        if index in named:
            raise ValueError(f"{origin}: {key!r} and {named[index]!r} name the same class ({short_name(index)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{origin}: weight of {key!r} is {weight!r}, not a finite number")
        named[index] = str(key)
        weights[index] = float(weight)
    return tuple(weights)


def changed_classes(weights: Sequence[float], reference: Sequence[float] = REFERENCE_WEIGHTS) -> dict[str, float]:
    """{short name: weight} of the classes whose weight differs from the reference: how `versions list` shows a
    version's weights in a line."""
    return {SHORT_NAMES[i]: float(w) for i, (w, r) in enumerate(zip(weights, reference)) if float(w) != float(r)}


def weights_digest(weights: Sequence[float]) -> str:
    """Short, order-sensitive fingerprint of a weight vector: part of the scorer version."""
    return hashlib.sha256(json.dumps([float(w) for w in weights]).encode()).hexdigest()[:12]
