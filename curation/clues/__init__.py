"""Clue texts from geo-guessing guides: place recognition (gazetteer + optional trained spaCy model), the
accept/reject/review decision, and ingest into the store. See README "Clue texts"."""

from curation.clues.assess import ACCEPTED, REJECTED, REVIEW, ClueAssessment, assess_clue, assess_clues, decide
from curation.clues.gazetteer import Gazetteer, get_gazetteer
from curation.clues.places import Place, extract_places

__all__ = [
    "ACCEPTED", "REJECTED", "REVIEW", "ClueAssessment", "ClueIngestSummary", "Gazetteer", "Place", "assess_clue",
    "assess_clues", "decide", "extract_places", "get_gazetteer", "ingest_clues",
]


def __getattr__(name: str):
    # ingest pulls in the store; loaded on first use so that place recognition alone stays light
    if name in ("ingest_clues", "ClueIngestSummary"):
        from curation.clues import ingest

        return getattr(ingest, name)
    raise AttributeError(name)
