"""The final decision on an image under one scorer version: the one rule both exports and threshold reports apply.

A human review label wins over the score in both directions (a reviewer can rescue an image the score drops and
drop one the score keeps); otherwise the image is kept when its locatability reaches the threshold. Quarantined
images are never kept, and an annotator's country replaces the metadata's, because review exists to fix both.
The rule is written once as SQL, so a million-row selection is filtered in the database, and once in Python for
callers that already hold the values; a test checks that the two agree. Images paired with accepted clues need no
score: for them the rule is quarantine and a reviewer's drop (`kept_for_reasoning`).

The threshold and review band are the scorer version's (`DecisionRule`, stored with the version): the environment
only decides which version is current for new work, so an export, a routing pass or a review task of a version
always applies that version's rule. An image in the band whose review is still open is "pending": the
`exclude` policy leaves it out (a borderline image nobody has looked at yet is not a decision), `score` lets the
score decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, literal, not_, select, true
from sqlalchemy.orm import Session, aliased

from db.models import Image, Quarantine, ReviewTask, Score
from db.review import OPEN_STATES
from db.scores import scorer_params

KEEP_LABELS = frozenset({"locatable"})
DROP_LABELS = frozenset({"not_locatable", "unusable"})
PENDING_POLICIES = ("exclude", "score")
PendingPolicy = Literal["exclude", "score"]


@dataclass(frozen=True)
class DecisionRule:
    """A scorer version's decision parameters: keep at >= threshold, review inside [review_low, review_high)."""

    threshold: float
    review_low: float
    review_high: float

    def __post_init__(self) -> None:
        # The threshold is a locatability in [0, 1]; a band may reach past 1 ([0, 1.01) routes every score, 1.0
        # included), but not below 0 or to infinity.
        for name, top in (("threshold", 1.0), ("review_low", math.inf), ("review_high", math.inf)):
            value = float(getattr(self, name))
            if not 0.0 <= value <= top or math.isinf(value):
                raise ValueError(f"{name.replace('_', ' ')} {value} must be a locatability between 0 and "
                                 f"{'1' if top == 1.0 else 'a finite bound'}")
            object.__setattr__(self, name, value)
        if self.review_low > self.review_high:
            raise ValueError(f"review band [{self.review_low}, {self.review_high}): low is above high")

    @property
    def band(self) -> tuple[float, float]:
        return (self.review_low, self.review_high)

    def decide(self, value: float) -> str:
        """keep / drop / review: what a score row records."""
        if self.review_low <= value < self.review_high:
            return "review"
        return "keep" if value >= self.threshold else "drop"

    def closeness(self, value: float) -> float:
        """1 at the threshold, 0 at the farther edge of the band: the review queue's priority (unsure first)."""
        half_width = max(self.threshold - self.review_low, self.review_high - self.threshold)
        if half_width <= 0:
            return 1.0
        return max(0.0, min(1.0, 1.0 - abs(value - self.threshold) / half_width))

    def as_params(self) -> dict[str, Any]:
        """The form a scorer version's params hold (and hash)."""
        return {"threshold": self.threshold, "review_band": [self.review_low, self.review_high]}

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "DecisionRule | None":
        if not params or "threshold" not in params or "review_band" not in params:
            return None
        low, high = params["review_band"]
        return cls(params["threshold"], low, high)

    @classmethod
    def from_settings(cls, settings) -> "DecisionRule":
        """The environment's rule: only for choosing the current version and scoring new rows under it."""
        return cls(settings.threshold, settings.review_band_low, settings.review_band_high)


def stored_rule(session: Session, scorer_version: str) -> DecisionRule | None:
    """The decision rule stored with `scorer_version`, None when the store has none (scores written without
    registering their version: no band, so nothing of it can wait for review)."""
    return DecisionRule.from_params(scorer_params(session, scorer_version))


def rule_of(session: Session, scorer_version: str) -> DecisionRule:
    """The decision rule stored with `scorer_version`; LookupError when the store has no parameters for it."""
    rule = stored_rule(session, scorer_version)
    if rule is None:
        raise LookupError(f"scorer version {scorer_version!r} has no recorded threshold and review band")
    return rule


def final_decision(locatability: float | None, human_label: str | None, threshold: float,
                   quarantined: bool = False, pending: bool = False) -> bool:
    """True when the image is kept. `pending`: the image waits for its review under the exclude policy."""
    if quarantined:
        return False
    if human_label in KEEP_LABELS:
        return True
    if human_label in DROP_LABELS:
        return False
    if pending:
        return False
    return locatability is not None and locatability >= threshold


def keep_condition(locatability: ColumnElement, human_label: ColumnElement, threshold: float,
                   pending: ColumnElement[bool] | None = None) -> ColumnElement[bool]:
    """`final_decision` as a SQL condition (quarantine is filtered separately, see `decided_images`). `pending`,
    when given, is the condition "waits for review" (`waiting_for_review`), which leaves an unlabelled image out."""
    whens = [(human_label.in_(sorted(KEEP_LABELS)), true()), (human_label.in_(sorted(DROP_LABELS)), false())]
    if pending is not None:
        whens.append((pending, false()))
    return case(*whens, else_=locatability >= literal(threshold)) == true()


def waiting_for_review(review, band: tuple[float, float],
                       locatability: ColumnElement = Score.locatability) -> ColumnElement[bool]:
    """The image's review task (joined as `review`) is still open (queued, in Label Studio, or conflicted) and its
    score lies in the version's band: the decision belongs to a human who has not given it yet. A task closed
    without an answer (retired: its band is no longer current) waits for nobody."""
    low, high = band
    return and_(review.state.in_(list(OPEN_STATES)), locatability >= literal(float(low)),
                locatability < literal(float(high)))


def not_quarantined(image=Image) -> ColumnElement[bool]:
    """Neither flagged on the image row nor recorded in the quarantine table by sha256 or path. Two NOT EXISTS
    with equality (not one with OR) so PostgreSQL can hash anti-join at a million rows."""
    by_sha = exists().where(Quarantine.item_kind == "image", Quarantine.reference == image.sha256)
    by_uri = exists().where(Quarantine.item_kind == "image", Quarantine.reference == image.uri)
    return and_(image.status != "quarantined", not_(by_sha), not_(by_uri))


def dropped_by_review(image=Image) -> ColumnElement[bool]:
    """A finished review dropped the image, whatever its score."""
    return exists().where(ReviewTask.item_kind == "image", ReviewTask.item_id == image.id, ReviewTask.state == "done",
                          ReviewTask.final_label.in_(sorted(DROP_LABELS)))


def kept_for_reasoning(image=Image) -> ColumnElement[bool]:
    """The rule for an image paired with an accepted clue (the reasoning stage's examples): the clue, not the score,
    says where it is, so the image goes in unless it is quarantined or a reviewer dropped it."""
    return and_(not_quarantined(image), not_(dropped_by_review(image)))


def decided_images(scorer_version: str, threshold: float, *columns: ColumnElement, kept_only: bool = True,
                   require_location: bool = True, lean: bool = False,
                   exclude_pending: tuple[float, float] | None = None) -> Select:
    """Images scored under `scorer_version` with their final decision applied.

    Result columns: id, sha256, uri, lat, lon, country_code (annotator's over metadata), city, locatability,
    class_ratios, human_label, kept, then any extra `columns`. `kept_only` filters to kept images (and leaves out the
    kept column, true on every row); `require_location` leaves out images without coordinates or country, which the
    location stage cannot use. `lean` selects only id, sha256, lat, lon, country_code, city (no JSON to decode in a
    first pass over many rows). `exclude_pending` = the version's review band: images waiting for review in it
    are not kept (the `exclude` policy); None lets the score decide for them (`score`).
    """
    # One join to the image's review task (one per image): its answer counts once the review is done, and an open
    # task in the band makes the image pending. No correlated subquery per row at a million rows.
    review = aliased(ReviewTask, name="review")
    done = review.state == "done"
    label = case((done, review.final_label))
    country = func.coalesce(case((done, review.final_country)), Image.country_code)
    pending = waiting_for_review(review, exclude_pending) if exclude_pending is not None else None
    kept = keep_condition(Score.locatability, label, threshold, pending)
    selected = (
        (Image.id, Image.sha256, Image.lat, Image.lon, country.label("country_code"), Image.city)
        if lean else
        (Image.id, Image.sha256, Image.uri, Image.lat, Image.lon, country.label("country_code"), Image.city,
         Score.locatability, Score.class_ratios, label.label("human_label"))
    )
    if not kept_only and not lean:
        selected += (kept.label("kept"),)
    stmt = (
        select(*selected, *columns)
        .join(Score, and_(Score.image_id == Image.id, Score.scorer_version == scorer_version))
        .outerjoin(review, and_(review.item_kind == "image", review.item_id == Image.id))
        .where(not_quarantined())
    )
    if kept_only:
        stmt = stmt.where(kept)
    if require_location:
        stmt = stmt.where(Image.lat.is_not(None), Image.lon.is_not(None), country.is_not(None))
    return stmt


def pending_images(scorer_version: str, band: tuple[float, float], threshold: float,
                   require_location: bool = True) -> Select:
    """One row (pending, above_threshold) counting the images of a version that wait for review in `band`, and how
    many of them the score alone would keep: what an export's manifest reports under either policy. (An image
    waiting for review has no answer, so its country is the metadata's.)"""
    review = aliased(ReviewTask, name="review")
    above = func.coalesce(func.sum(case((Score.locatability >= literal(threshold), 1), else_=0)), 0)
    stmt = (
        select(func.count().label("pending"), above.label("above_threshold"))
        .select_from(Image)
        .join(Score, and_(Score.image_id == Image.id, Score.scorer_version == scorer_version))
        .join(review, and_(review.item_kind == "image", review.item_id == Image.id))
        .where(not_quarantined(), waiting_for_review(review, band))
    )
    if require_location:
        stmt = stmt.where(Image.lat.is_not(None), Image.lon.is_not(None), Image.country_code.is_not(None))
    return stmt


def open_review_count(session: Session, scorer_version: str) -> int:
    """How many images of `scorer_version` still wait for a reviewer in that version's band (any location): what a
    run started with `--wait-review` waits on before it exports. 0 for a version without a stored rule (no band,
    nothing can be pending)."""
    rule = stored_rule(session, scorer_version)
    if rule is None:
        return 0
    pending, _ = session.execute(pending_images(scorer_version, rule.band, rule.threshold,
                                                require_location=False)).one()
    return int(pending or 0)
