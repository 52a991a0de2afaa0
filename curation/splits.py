"""Geo-aware train/val/test splits: whole places go to one split, so a model is never tested on streets it trained on.

An image's place is its city (country + the city's canonical name, so "Kraków", "Cracow", "Krakow" and "krakow" are
one place: geocurate.countries.canonical_city reads GeoNames' alternate names and transliterations); an image without
a city falls back to its H3 cell at `h3_resolution`. A misspelled or unknown city name ("Krakw", "Krakow Old Town")
still makes its own place, so places are not dealt one by one: every city is tied to the H3 cells its images lie in
(`PlaceGraph`), and the connected places (a city, its misspellings and the city-less images of its cells, and
neighbours sharing a cell) form one split group. Groups are ordered by a seeded hash of their key and dealt greedily
to the split furthest below its target share, which is deterministic for a seed, independent of row order, and fills
every split with a non-zero share once there are at least as many groups as splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import h3

from geocurate.countries import canonical_city
from geocurate.errors import UserError
from geocurate.export_format import SPLITS


def city_key(country_code: str | None, city: str) -> str:
    return f"city:{(country_code or '').upper()}:{canonical_city(city, country_code)}"


def cell_key(lat: float, lon: float, h3_resolution: int) -> str:
    return f"h3:{h3.latlng_to_cell(lat, lon, h3_resolution)}"


def group_key(country_code: str | None, city: str | None, lat: float | None, lon: float | None,
              h3_resolution: int) -> str | None:
    """The place an image belongs to; None when it has neither a city nor coordinates."""
    if city and city.strip():
        return city_key(country_code, city)
    if lat is None or lon is None:
        return None
    return cell_key(lat, lon, h3_resolution)


def split_of_image(split_of: Mapping[str, str], country_code: str | None, city: str | None, lat: float | None,
                   lon: float | None, h3_resolution: int) -> str | None:
    """The split of an image that may not be in the export (a reasoning pair's image): its place's, else its H3
    cell's (a city spelled in a way no exported image uses still lies in an exported place's streets); None when
    neither is in the export."""
    found = split_of.get(group_key(country_code, city, lat, lon, h3_resolution))
    if found is None and lat is not None and lon is not None:
        found = split_of.get(cell_key(lat, lon, h3_resolution))
    return found


class PlaceGraph:
    """Places (city and cell keys) joined when an image ties a city to a cell; `groups` gives each place its split
    group, named by the group's smallest key (a city's key when it has one: "city:" sorts before "h3:")."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def add(self, key: str) -> None:
        self._parent.setdefault(key, key)

    def _root(self, key: str) -> str:
        parent = self._parent
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    def join(self, a: str, b: str) -> None:
        self.add(a)
        self.add(b)
        ra, rb = self._root(a), self._root(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self._parent[rb] = ra  # the smaller key is the root: a group's name is its smallest key

    def groups(self) -> dict[str, str]:
        """Every place → its group's name."""
        return {key: self._root(key) for key in self._parent}


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


def assign_places(place_sizes: Mapping[str, int], graph: PlaceGraph, fractions: Sequence[float],
                  seed: int = 0) -> dict[str, str]:
    """Every place of `graph` (and every key of `place_sizes`) → a split, whole groups at a time; a group's size is
    the sum of its places' sizes (places with no image left count 0 but still get their group's split)."""
    for key in place_sizes:
        graph.add(key)
    group_of = graph.groups()
    sizes: dict[str, int] = dict.fromkeys(group_of.values(), 0)
    for key, size in place_sizes.items():
        sizes[group_of[key]] += size
    split_of_group = assign_groups({g: n for g, n in sizes.items() if n > 0}, fractions, seed)
    return {key: split_of_group.get(group, SPLITS[0]) for key, group in group_of.items()}
