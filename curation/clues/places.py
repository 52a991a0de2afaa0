"""Places named in a clue: each recognised span with the countries it can mean and, when it can mean only one (or
one clearly dominates), the country it resolves to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from curation.clues.gazetteer import Candidate, Gazetteer, applicable_candidates
from geocurate.countries import city_point, country_code

MODEL_LABELS = {"GPE", "LOC", "NORP"}
DOMINANCE = 5.0  # a city resolves to its country when ≥ 5× as populous as any foreign namesake ("Paris": FR)
METROPOLIS = 1_000_000  # ... and outweighs foreign regions of the same name only from this size ("Santiago": CL)
# Words around a language-demonym that make it a language ("signs in Spanish", "Portuguese-speaking").
LANGUAGE_AFTER = {"language", "languages", "speaking", "speakers", "speaker", "spoken", "text", "texts", "words",
                  "word", "translation", "translations", "alphabet", "letters", "subtitles"}
LANGUAGE_BEFORE = {"speak", "speaks", "speaking", "spoken", "written", "write", "writes", "language", "languages"}
# A demonym followed by one of these (or by punctuation) is used as a noun: "uses Portuguese on signs", "in French."
CLAUSE_WORDS = {"and", "or", "but", "while", "whereas", "as", "with", "on", "in", "of", "at", "to", "is", "are", "was",
                "were", "for", "rather", "instead", "too", "only", "below", "above", "under", "over", "next", "than",
                "not", "alongside", "besides", "plus", "which", "that", "so", "if", "when", "where", "also", "by"}
COORDINATORS = {"and", "or", ",", "/"}

@dataclass
class Place:
    text: str
    start: int  # character offsets in the clue
    end: int
    kind: str  # country / city / region / continent / demonym
    codes: tuple[str, ...]  # ISO 3166-1 alpha-2 codes it can mean, most likely first; empty for a continent
    country: str | None = None  # the one code it resolves to on its own; None when ambiguous
    lat: float | None = None  # cities: the most likely one's coordinates
    lon: float | None = None
    continent: str | None = None
    source: str = "gazetteer"  # or "model" for entities only the trained spaCy model found
    candidates: int = field(default=1)  # how many distinct places the name can mean

    @property
    def ambiguous(self) -> bool:
        return bool(self.codes) and self.country is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["codes"] = list(self.codes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Place":
        return cls(**{**data, "codes": tuple(data.get("codes", ()))})


def resolve(candidates: list[Candidate]) -> str | None:
    """The one country a name means on its own, or None when it stays ambiguous ("Georgia", "Victoria")."""
    codes = list(dict.fromkeys(c["code"] for c in candidates if c["code"]))
    if len(codes) == 1:
        return codes[0]
    if not codes or any(c["kind"] in ("country", "demonym") or c.get("group") for c in candidates):
        return None
    cities = sorted((c for c in candidates if c["kind"] == "city"), key=lambda c: -(c.get("pop") or 0))
    if not cities:
        return None
    top = cities[0]
    rival = max((c.get("pop") or 0 for c in cities if c["code"] != top["code"]), default=0)
    foreign_regions = any(c["kind"] == "region" and c["code"] != top["code"] for c in candidates)
    if top["pop"] >= DOMINANCE * max(rival, 1) and (not foreign_regions or top["pop"] >= METROPOLIS):
        return top["code"]
    return None


def _place_from_candidates(span, candidates: list[Candidate]) -> Place:
    resolved = resolve(candidates)
    codes = list(dict.fromkeys(c["code"] for c in candidates if c["code"]))
    if resolved:
        codes.remove(resolved)
        codes.insert(0, resolved)
    main = next((c for c in candidates if c["code"] == resolved), candidates[0])
    city = next((c for c in candidates if c["kind"] == "city" and (resolved is None or c["code"] == resolved)), None)
    return Place(
        text=span.text, start=span.start_char, end=span.end_char, kind=main["kind"], codes=tuple(codes),
        country=resolved, lat=city["lat"] if city else None, lon=city["lon"] if city else None,
        continent=main.get("continent"), candidates=len(candidates),
    )


def _place_from_model(span, gazetteer: Gazetteer) -> Place:
    """An entity only the trained model found: resolved through the country and city look-ups, else kept unresolved."""
    code = country_code(span.text)
    kind = "demonym" if span.label_ == "NORP" else "region"
    if code:
        return Place(span.text, span.start_char, span.end_char, "country", (code,), code, source="model")
    point = city_point(span.text)
    if point:
        from geocurate.countries import normalise

        entries = gazetteer.entries.get(normalise(span.text), [])
        cities = [c for c in entries if c["kind"] == "city"]
        if cities:
            place = _place_from_candidates(span, cities)
            place.source = "model"
            return place
    return Place(span.text, span.start_char, span.end_char, kind, (), None, source="model", candidates=0)


@lru_cache(maxsize=1)
def language_names() -> frozenset[str]:
    import json

    from curation.clues.gazetteer import VOCABULARY

    return frozenset(name.lower() for name in json.loads(VOCABULARY.read_text(encoding="utf-8"))["languages"])


def _used_as_noun(span, ents_by_start: dict[int, Any]) -> bool:
    """"uses Portuguese on", "in French." are nouns; "Polish bollards", "Estonian and Latvian bollards" adjectives."""
    doc = span.doc
    if span.end >= len(doc):
        return True
    following = doc[span.end]
    if following.lower_ in COORDINATORS:
        chained = ents_by_start.get(span.end + 1)
        if chained is not None and chained.label_ == "NORP":
            return _used_as_noun(chained, ents_by_start)
        return True
    return not following.is_alpha or following.lower_ in CLAUSE_WORDS


def is_language_mention(span, ents_by_start: dict[int, Any]) -> bool:
    """A demonym that names a language used as one ("signs in Spanish", "Portuguese-speaking", "uses French on its
    signs") says which language, not which country, so it is not a place."""
    if span.text.lower() not in language_names():
        return False
    doc = span.doc
    before = doc[span.start - 1].lower_ if span.start > 0 else ""
    after = doc[span.end].lower_ if span.end < len(doc) else ""
    after2 = doc[span.end + 1].lower_ if span.end + 1 < len(doc) else ""
    if after in LANGUAGE_AFTER or (after == "-" and after2 in LANGUAGE_AFTER) or before in LANGUAGE_BEFORE:
        return True
    return _used_as_noun(span, ents_by_start)


def places_in_doc(doc, gazetteer: Gazetteer) -> list[Place]:
    places: list[Place] = []
    ents_by_start = {span.start: span for span in doc.ents}
    for span in doc.ents:
        key = span.ent_id_
        if key and key in gazetteer.entries:
            candidates = applicable_candidates(span, gazetteer.entries[key])
            if not candidates:
                continue
            if candidates[0]["kind"] == "demonym" and is_language_mention(span, ents_by_start):
                continue
            places.append(_place_from_candidates(span, candidates))
        elif span.label_ in MODEL_LABELS:
            places.append(_place_from_model(span, gazetteer))
    return places


def extract_places(text: str, gazetteer: Gazetteer) -> list[Place]:
    """Places named in `text`, in order. Languages ("signs in Spanish") are not places and are left out."""
    return places_in_doc(gazetteer.nlp(text), gazetteer)
