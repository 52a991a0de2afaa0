"""Geo-localisation metrics with the conventions of the Im2GPS / PIGEON evaluations: great-circle error, share of
answers within 1 / 25 / 200 / 750 / 2500 km (street / city / region / country / continent), median error, and the
GeoGuessr score 5000·exp(−d / 1492.7 km).

A predicted city is placed at its geonames coordinates (within the predicted country when that is known), a country
without a usable city at its representative point (geocurate.countries.country_point). An answer that cannot be
placed at all (unparsed, unknown country) counts as the worst possible guess, half the Earth's circumference away,
so failures lower every distance metric instead of silently leaving the sample.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from geocurate.countries import city_point, country_point, normalise

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
WORST_DISTANCE_KM = math.pi * EARTH_RADIUS_KM  # antipodal: ~20,015 km
THRESHOLDS_KM = (1, 25, 200, 750, 2500)
GEOGUESSR_MAX = 5000.0
GEOGUESSR_SCALE_KM = 1492.7


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two (lat, lon) points in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def geoguessr_score(distance_km: float) -> float:
    return GEOGUESSR_MAX * math.exp(-distance_km / GEOGUESSR_SCALE_KM)


def place(country_code: str | None, city: str | None) -> tuple[float, float] | None:
    """Coordinates for a (country, city) answer: the city when geonames knows it, else the country's point."""
    if city:
        point = city_point(city, country_code) if country_code else city_point(city)
        if point:
            return point
    if country_code:
        try:
            return country_point(country_code)
        except KeyError:
            return None
    return None


def truth_point(lat: float | None, lon: float | None, country_code: str | None,
                city: str | None) -> tuple[float, float] | None:
    """The example's own coordinates, else where its city or country is."""
    if lat is not None and lon is not None:
        return float(lat), float(lon)
    return place(country_code, city)


def same_city(predicted: str | None, truth: str | None) -> bool:
    return bool(predicted and truth) and normalise(predicted) == normalise(truth)


def city_hit(row: dict[str, Any]) -> bool:
    """The right city in the right country: a city name is only placed by its country (there are Londons in Canada
    and Parises in Texas), so a right name with no predicted country, or with a wrong one, is a miss. Only a truth
    that has no country itself is judged on the city alone."""
    if not same_city(row.get("pred_city"), row.get("truth_city")):
        return False
    truth_code = row.get("truth_code")
    return truth_code is None or row.get("pred_code") == truth_code


def geo_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over rows of {truth_code, truth_city, truth_lat, truth_lon, pred_code, pred_city, parsed}.

    Country accuracy counts rows whose truth has a country, city accuracy rows whose truth has a city; distances
    cover rows whose truth can be placed."""
    n = len(rows)
    with_country = [r for r in rows if r.get("truth_code")]
    with_city = [r for r in rows if r.get("truth_city")]
    distances: list[float] = []
    for r in rows:
        truth = truth_point(r.get("truth_lat"), r.get("truth_lon"), r.get("truth_code"), r.get("truth_city"))
        if truth is None:
            continue
        guess = place(r.get("pred_code"), r.get("pred_city")) if r.get("parsed") else None
        distances.append(haversine_km(*truth, *guess) if guess else WORST_DISTANCE_KM)

    def share(hits: int, total: int) -> float | None:
        return round(hits / total, 4) if total else None

    return {
        "n": n,
        "country_accuracy": share(sum(r.get("pred_code") == r["truth_code"] for r in with_country), len(with_country)),
        "city_accuracy": share(sum(city_hit(r) for r in with_city), len(with_city)),
        "within_km": {str(t): share(sum(d <= t for d in distances), len(distances)) for t in THRESHOLDS_KM},
        "median_km": round(statistics.median(distances), 2) if distances else None,
        "mean_geoguessr": round(statistics.fmean(geoguessr_score(d) for d in distances), 1) if distances else None,
        "parse_failure_rate": share(sum(not r.get("parsed") for r in rows), n),
        "n_with_distance": len(distances),
    }
