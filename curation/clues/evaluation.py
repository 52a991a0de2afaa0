"""Agreement of the clue assessment with a hand-labelled corpus (tests/data/clues_corpus.jsonl): each line has the
clue text and its expected outcome: an ISO alpha-2 code, "none" (names no country) or "ambiguous" (names places
that may be several countries)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from curation.clues.assess import ClueAssessment

NONE, AMBIGUOUS = "none", "ambiguous"


@dataclass
class CorpusScores:
    total: int = 0
    agreed: int = 0
    true_pos: int = 0  # geo_ok predicted and expected
    false_pos: int = 0
    false_neg: int = 0
    country_total: int = 0  # clues whose expected outcome is one country
    country_correct: int = 0
    disagreements: list[str] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.agreed / self.total if self.total else 0.0

    @property
    def geo_precision(self) -> float:
        return self.true_pos / (self.true_pos + self.false_pos) if self.true_pos + self.false_pos else 1.0

    @property
    def geo_recall(self) -> float:
        return self.true_pos / (self.true_pos + self.false_neg) if self.true_pos + self.false_neg else 1.0

    @property
    def country_accuracy(self) -> float:
        return self.country_correct / self.country_total if self.country_total else 0.0


def load_corpus(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def outcome(assessment: ClueAssessment) -> str:
    if not assessment.geo_ok:
        return NONE
    return assessment.country or AMBIGUOUS


def score(rows: list[dict], assessments: list[ClueAssessment]) -> CorpusScores:
    scores = CorpusScores()
    for row, assessment in zip(rows, assessments, strict=True):
        expected, got = row["expect"], outcome(assessment)
        scores.total += 1
        scores.agreed += expected == got
        if expected != got:
            scores.disagreements.append(f"{row['text']!r}: expected {expected}, got {got} ({assessment.reason})")
        expected_geo, got_geo = expected != NONE, assessment.geo_ok
        scores.true_pos += expected_geo and got_geo
        scores.false_pos += got_geo and not expected_geo
        scores.false_neg += expected_geo and not got_geo
        if expected not in (NONE, AMBIGUOUS):
            scores.country_total += 1
            scores.country_correct += assessment.country == expected
    return scores
