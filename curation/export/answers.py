"""What the model learns to say, as JSONL lines of the export format (geocurate/export_format.py).

The location pass writes one line per exported image, so its lines come from a template rather than json.dumps (a
third of the cost); tests keep the template, `example_line` and `Example.to_line` spelling every value alike.
"""

from __future__ import annotations

import json
import math
from typing import Any

from curation.locatability import REFERENCE_WEIGHTS, SHORT_NAMES
from geocurate.export_format import PROMPT, Example

NO_EVIDENCE = "The scene shows little specific geographic evidence."
# class index (as stored: a JSON key, or an int) → (reference weight, short name)
_EVIDENCE = {key: entry for i, entry in enumerate(zip(REFERENCE_WEIGHTS, SHORT_NAMES)) for key in (i, str(i))}


def evidence_sentence(class_ratios: dict[str, float] | None, top: int = 3) -> str:
    """The location stage's `reasons`: the classes contributing most to the image's locatability (weight × area),
    the same evidence the score used. It runs once per exported image: the weights are Python floats (their product
    is the IEEE double numpy's would be, without a numpy scalar per class) found by the stored key as it is."""
    if not class_ratios:
        return NO_EVIDENCE
    contributions = []
    for index, fraction in class_ratios.items():
        entry = _EVIDENCE.get(index)
        if entry is None:  # a key spelled otherwise ("06", 6.5): as int() reads it
            entry = _EVIDENCE.get(int(index))
        if entry is not None and fraction:
            contribution = entry[0] * fraction
            if contribution > 0:
                contributions.append((-contribution, entry[1]))
    if not contributions:
        return NO_EVIDENCE
    picked = [name for _, name in sorted(contributions)[:top]]
    listed = picked[0] if len(picked) == 1 else ", ".join(picked[:-1]) + f" and {picked[-1]}"
    return f"Main geographic evidence: {listed}."


def example_line(example: Example) -> str:
    """`Example.to_line()` without dataclasses.asdict's deep copies (10x faster)."""
    data = dict(example.__dict__)
    data["answer"] = dict(example.answer.__dict__)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


json_string = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


def json_scalar(value: Any) -> str:
    """One JSON value spelled exactly as json.dumps spells it."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return json_string(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, ensure_ascii=False)


_PROMPT_JSON = json_string(PROMPT)


def location_line(sha256: str, image: str, country: str, country_code: str, city: str | None, reasons: str,
                  lat: float | None, lon: float | None, locatability: float, place: str,
                  human_label: str | None) -> str:
    """`example_line` of a location example, from a template of its sorted keys. `country` and `country_code` are
    JSON already (the caller spells them once per country)."""
    city_json = json_string(city) if type(city) is str else json_scalar(city)
    label = f'"human_label": {json_scalar(human_label)}, ' if human_label else ""
    # finite floats (x - x == 0) are written as repr, like json.dumps; anything else goes through json_scalar
    lat_json = float.__repr__(lat) if type(lat) is float and lat - lat == 0 else json_scalar(lat)
    lon_json = float.__repr__(lon) if type(lon) is float and lon - lon == 0 else json_scalar(lon)
    return (f'{{"answer": {{"city": {city_json}, "country": {country}, "reasons": {json_string(reasons)}}}, '
            f'"city": {city_json}, "country_code": {country_code}, "id": {json_string(sha256)}, '
            f'"image": {json_string(image)}, "lat": {lat_json}, "lon": {lon_json}, '
            f'"meta": {{{label}"locatability": {json_scalar(round(float(locatability), 6))}, '
            f'"place": {json_string(place)}}}, "prompt": {_PROMPT_JSON}}}')
