"""Route what the machine cannot decide to human review: borderline images and clues assessed as "review".

The rows this writes are the review queue. With Label Studio configured, `push_tasks` sends them there; without
it they are the local queue (`geocurate review list`). Routing is idempotent (one row per item), so it can run
after every scoring batch.

The band and threshold are the scorer version's own (stored with it): a version made by `rescore --band` routes
its band whatever GEOCURATE_REVIEW_BAND_* say, and two versions never mix their bands in one queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.decisions import DecisionRule, rule_of
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


def closeness(score: float, settings: Settings | DecisionRule) -> float:
    """1 at the threshold, 0 at the farther edge of the review band: the most uncertain items sort first."""
    rule = settings if isinstance(settings, DecisionRule) else DecisionRule.from_settings(settings)
    return rule.closeness(score)


def routing_rule(session: Session, scorer_version: str, settings: Settings | None = None) -> DecisionRule:
    """The version's stored rule; the settings' only for a version registered without one (scores written by
    hand or by a release that did not record it). LookupError when neither exists."""
    try:
        return rule_of(session, scorer_version)
    except LookupError:
        if settings is None:
            raise
        return DecisionRule.from_settings(settings)


def route_for_review(session: Session, scorer_version: str, settings: Settings | None = None) -> RouteSummary:
    """Queue images scored inside `scorer_version`'s review band [low, high), and clues in "review". `settings`
    serves only versions that recorded no band (see routing_rule)."""
    rule = routing_rule(session, scorer_version, settings)
    low, high = rule.band
    borderline = session.execute(
        select(Score.image_id, Score.locatability)
        .where(Score.scorer_version == scorer_version, Score.locatability >= low, Score.locatability < high)
    ).all()
    image_rows = [
        dict(item_kind="image", item_id=image_id, priority=rule.closeness(score),
             reason=f"locatability {score:.3f} in review band [{low:g}, {high:g}) of scorer {scorer_version}",
             scorer_version=scorer_version)  # the version that routed it: a later one retires it
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
