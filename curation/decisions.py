"""The final decision on an image under one scorer version: the one rule both exports and threshold reports apply.

A human review label wins over the score in both directions (a reviewer can rescue an image the score drops and
drop one the score keeps); otherwise the image is kept when its locatability reaches the threshold. Quarantined
images are never kept, and an annotator's country replaces the metadata's, because review exists to fix both.
The rule is written once as SQL, so a million-row selection is filtered in the database, and once in Python for
callers that already hold the values; a test checks that the two agree. Images paired with accepted clues need no
score: for them the rule is quarantine and a reviewer's drop (`kept_for_reasoning`).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, literal, not_, select, true
from sqlalchemy.orm import aliased

from db.models import Image, Quarantine, ReviewTask, Score

KEEP_LABELS = frozenset({"locatable"})
DROP_LABELS = frozenset({"not_locatable", "unusable"})


def final_decision(locatability: float | None, human_label: str | None, threshold: float,
                   quarantined: bool = False) -> bool:
    """True when the image is kept."""
    if quarantined:
        return False
    if human_label in KEEP_LABELS:
        return True
    if human_label in DROP_LABELS:
        return False
    return locatability is not None and locatability >= threshold


def keep_condition(locatability: ColumnElement, human_label: ColumnElement, threshold: float) -> ColumnElement[bool]:
    """`final_decision` as a SQL condition (quarantine is filtered separately, see `decided_images`)."""
    return case(
        (human_label.in_(sorted(KEEP_LABELS)), true()),
        (human_label.in_(sorted(DROP_LABELS)), false()),
        else_=locatability >= literal(threshold),
    ) == true()


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
                   require_location: bool = True, lean: bool = False) -> Select:
    """Images scored under `scorer_version` with their final decision applied.

    Result columns: id, sha256, uri, lat, lon, country_code (annotator's over metadata), city, locatability,
    class_ratios, human_label, kept, then any extra `columns`. `kept_only` filters to kept images (and leaves out the
    kept column, true on every row); `require_location` leaves out images without coordinates or country, which the
    location stage cannot use. `lean` selects only id, sha256, lat, lon, country_code, city (no JSON to decode in a
    first pass over many rows).
    """
    review = aliased(ReviewTask, name="review")
    label = review.final_label
    country = func.coalesce(review.final_country, Image.country_code)
    kept = keep_condition(Score.locatability, label, threshold)
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
        .outerjoin(review, and_(review.item_kind == "image", review.item_id == Image.id, review.state == "done"))
        .where(not_quarantined())
    )
    if kept_only:
        stmt = stmt.where(kept)
    if require_location:
        stmt = stmt.where(Image.lat.is_not(None), Image.lon.is_not(None), country.is_not(None))
    return stmt
