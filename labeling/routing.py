"""Route what the machine cannot decide to human review: borderline images and clues assessed as "review".

The rows this writes are the review queue. With Label Studio configured, `push_tasks` sends them there; without
it they are the local queue (`geocurate review list`). Routing is idempotent (one row per item), so it can run
after every scoring batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Clue, Score
from db.review import add_review_tasks
from geocurate.settings import Settings

CLUE_PRIORITY = 0.5  # clues carry no score; they sort between sure and unsure images


@dataclass(frozen=True)
class RouteSummary:
    images_queued: int
    clues_queued: int
    images_in_band: int
    clues_in_review: int


def closeness(score: float, settings: Settings) -> float:
    """1 at the threshold, 0 at the farther edge of the review band: the most uncertain items sort first."""
    half_width = max(settings.threshold - settings.review_band_low, settings.review_band_high - settings.threshold)
    if half_width <= 0:
        return 1.0
    return max(0.0, min(1.0, 1.0 - abs(score - settings.threshold) / half_width))


def route_for_review(session: Session, scorer_version: str, settings: Settings) -> RouteSummary:
    """Queue images scored in [review_band_low, review_band_high) by `scorer_version`, and clues in "review"."""
    low, high = settings.review_band_low, settings.review_band_high
    borderline = session.execute(
        select(Score.image_id, Score.locatability)
        .where(Score.scorer_version == scorer_version, Score.locatability >= low, Score.locatability < high)
    ).all()
    image_rows = [
        dict(item_kind="image", item_id=image_id, priority=closeness(score, settings),
             reason=f"locatability {score:.3f} in review band [{low}, {high}) of scorer {scorer_version}")
        for image_id, score in borderline
    ]
    clues = session.execute(select(Clue.id, Clue.reason).where(Clue.status == "review")).all()
    clue_rows = [dict(item_kind="clue", item_id=clue_id, priority=CLUE_PRIORITY, reason=reason or "clue assessed as review")
                 for clue_id, reason in clues]
    return RouteSummary(
        images_queued=add_review_tasks(session, image_rows),
        clues_queued=add_review_tasks(session, clue_rows),
        images_in_band=len(image_rows),
        clues_in_review=len(clue_rows),
    )
