"""Deciding what a clue is worth: accepted (one clear country), rejected (names no place: never trained on, but kept
in the store with its reason) or review (ambiguous, several countries, or in conflict with the country given with it;
a human decides in the labeling step)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from curation.clues.gazetteer import Gazetteer
from curation.clues.places import Place, places_in_doc
from geocurate.countries import country_code, country_name

ACCEPTED, REJECTED, REVIEW = "accepted", "rejected", "review"
PIPE_BATCH_SIZE = 512


@dataclass
class ClueAssessment:
    geo_ok: bool  # names at least one place that can mean a country
    country: str | None  # the resolved ISO alpha-2 code; None when there is none or it is ambiguous
    decision: str  # accepted / rejected / review
    reason: str
    places: list[Place] = field(default_factory=list)


def _names(codes: Iterable[str]) -> str:
    return ", ".join(f"{country_name(c)} ({c})" for c in codes)


def decide(places: list[Place], hint: str | None = None) -> ClueAssessment:
    """The decision rules, on places already extracted. `hint`: the country given with the clue (code or name)."""
    hint_code = country_code(hint) if hint else None
    located = [p for p in places if p.codes]
    if not located:
        if places:
            names = ", ".join(dict.fromkeys(p.text for p in places))
            return ClueAssessment(False, None, REVIEW, f"names {names} but no country.", places)
        return ClueAssessment(False, None, REJECTED, "names no place, so it cannot teach where an image is.", places)

    resolved = list(dict.fromkeys(p.country for p in located if p.country))
    unresolved: list[Place] = []
    for place in located:
        if place.country is None and not set(place.codes) & set(resolved):
            unresolved.append(place)  # ambiguous and not settled by another place in the same clue
    possible = list(dict.fromkeys([*resolved, *(c for p in unresolved for c in p.codes)]))

    if hint_code:
        if hint_code in possible:
            others = [c for c in resolved if c != hint_code]
            also = f"; also names {_names(others)}" if others else ""
            return ClueAssessment(True, hint_code, ACCEPTED,
                                  f"names {country_name(hint_code)}, the given country{also}.", places)
        single = resolved[0] if len(resolved) == 1 and not unresolved else None
        return ClueAssessment(True, single, REVIEW,
                              f"names {_names(possible)} but was given {_names([hint_code])}.", places)

    if len(resolved) == 1 and not unresolved:
        return ClueAssessment(True, resolved[0], ACCEPTED, f"names {_names(resolved)}.", places)
    if len(resolved) > 1 or (resolved and unresolved):
        return ClueAssessment(True, None, REVIEW, f"names several countries: {_names(possible)}.", places)
    texts = ", ".join(dict.fromkeys(p.text for p in unresolved))
    return ClueAssessment(True, None, REVIEW, f"{texts} could be {_names(possible)}.", places)


def assess_clue(text: str, country_hint: str | None = None, *, gazetteer: Gazetteer) -> ClueAssessment:
    return decide(places_in_doc(gazetteer.nlp(text), gazetteer), country_hint)


def assess_clues(texts: Sequence[str], hints: Sequence[str | None] | None,
                 gazetteer: Gazetteer) -> list[ClueAssessment]:
    """Many clues in one batched spaCy pass (nlp.pipe): ~10× faster than one call per clue."""
    hints = list(hints) if hints is not None else [None] * len(texts)
    if len(hints) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(hints)} hints")
    docs = gazetteer.nlp.pipe(texts, batch_size=PIPE_BATCH_SIZE)
    return [decide(places_in_doc(doc, gazetteer), hint) for doc, hint in zip(docs, hints)]
