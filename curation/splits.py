"""Geo-aware train/val/test splits: whole places go to one split, so a model is never tested on streets it trained on.

The unit is a city (country + normalised city name, so "Kraków" and "krakow" are one place); an image without a
city falls back to its H3 cell at `settings.h3_resolution`. Groups are ordered by a seeded hash of their key and
dealt greedily to the split furthest below its target share, which is deterministic for a seed, independent of
row order, and fills every split with a non-zero share once there are at least as many groups as splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import h3

from geocurate.countries import normalise
from geocurate.errors import UserError
from geocurate.export_format import SPLITS


def group_key(country_code: str | None, city: str | None, lat: float | None, lon: float | None,
              h3_resolution: int) -> str | None:
    """The place an image belongs to; None when it has neither a city nor coordinates."""
    if city and city.strip():
        return f"city:{(country_code or '').upper()}:{normalise(city)}"
    if lat is None or lon is None:
        return None
    return f"h3:{h3.latlng_to_cell(lat, lon, h3_resolution)}"


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """"0.8/0.1/0.1" (or a 3-sequence) → fractions for train, val, test; they must be ≥ 0 and sum to 1."""
    try:
        parts = [float(p) for p in (text.split("/") if isinstance(text, str) else text)]
    except ValueError:
        raise UserError(f"split {text!r} is not three numbers like 0.8/0.1/0.1") from None
    if len(parts) != len(SPLITS) or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise UserError(f"split {text!r} must be three non-negative fractions (train/val/test) summing to 1")
    return parts[0], parts[1], parts[2]


def _order(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def assign_groups(group_sizes: Mapping[str, int], fractions: Sequence[float], seed: int = 0) -> dict[str, str]:
    """Map every group to one split name so that split sizes (in images) approach `fractions`."""
    counts = [0] * len(SPLITS)
    assigned = 0
    result: dict[str, str] = {}
    for key in sorted(group_sizes, key=lambda k: _order(k, seed)):
        size = group_sizes[key]
        total = assigned + size
        deficits = [fractions[i] * total - counts[i] for i in range(len(SPLITS))]
        best = max(range(len(SPLITS)), key=lambda i: (fractions[i] > 0, deficits[i], -i))
        result[key] = SPLITS[best]
        counts[best] += size
        assigned = total
    return result
