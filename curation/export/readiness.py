"""Fail fast: an export that training is asked to use must hold at least one example for every stage it trains.

Without this check an empty export was built silently and training failed minutes later on a worker with a
traceback (`train:location` on 0 examples). The check runs where the cause is known: before anything is written
(from the store's counts, `check_trainable`) and once more on the built counts before the folder is put in place
(`check_built`, which catches a selection whose places all went to val/test). The message names the stage, the
version's threshold and the counts, and says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, not_, select
from sqlalchemy.orm import Session

from curation.decisions import decided_images, kept_for_reasoning, not_quarantined, pending_images
from curation.export.params import TRAIN_STAGES, ExportParams
from db.exports import accepted_clue_pairs
from db.models import Image, Score
from geocurate.errors import UserError


class EmptyExport(UserError):
    """An export without a usable example for a stage that is to be trained on it."""


@dataclass(frozen=True)
class Usable:
    """What the store holds for an export request: images scored under the version, kept (with a location, under
    the pending policy), waiting for review in the band, quarantined among the scored; usable clue pairs."""

    scored: int
    kept: int
    pending: int
    quarantined: int
    clue_pairs: int


def usable_counts(session: Session, params: ExportParams) -> Usable:
    """Counts for a resolved request (`ExportParams.resolved`)."""
    version = params.scorer_version
    scored = session.scalar(select(func.count()).select_from(Score).where(Score.scorer_version == version)) or 0
    quarantined = session.scalar(
        select(func.count()).select_from(Image).join(Score, Score.image_id == Image.id)
        .where(Score.scorer_version == version, not_(not_quarantined()))) or 0
    kept_rows = decided_images(version, params.threshold, lean=True, exclude_pending=params.excluded_band)
    kept = session.scalar(select(func.count()).select_from(kept_rows.subquery())) or 0
    pending = 0
    if params.review_band is not None:
        pending = session.execute(pending_images(version, params.review_band, params.threshold)).one()[0] or 0
    pairs_rows = accepted_clue_pairs().where(kept_for_reasoning()).order_by(None)
    pairs = session.scalar(select(func.count()).select_from(pairs_rows.subquery())) or 0
    return Usable(int(scored), int(kept), int(pending), int(quarantined), int(pairs))


def empty_stage_message(params: ExportParams, usable: Usable, stage: str, train_examples: int | None = None) -> str:
    """One line: which stage has nothing, under which version and threshold, the counts, and what to change."""
    counts = (f"scored {usable.scored}, kept {usable.kept}, pending review {usable.pending}, "
              f"quarantined {usable.quarantined}")
    where = f"scorer {params.scorer_version} at threshold {params.threshold:g}"
    if stage == "location":
        what = (f"0 kept images in its train split ({usable.kept} kept, all in val/test places)"
                if train_examples == 0 and usable.kept else "0 kept images with a location")
        hints = [f"lower the threshold (geocurate rescore --from {params.scorer_version} --threshold T)"]
        if usable.pending:
            hints.append(f"review the {usable.pending} pending images (geocurate review list)"
                         + (" or export with --pending score" if params.pending == "exclude" else ""))
        if train_examples == 0 and usable.kept:
            hints.append("change --split or --seed, or add images from more places")
    else:
        what = "0 clue pairs" + (" in train (all held out with val/test places)" if train_examples == 0 and
                                 usable.clue_pairs else "")
        hints = ["ingest clue texts (geocurate ingest clues FILE) and pair them (geocurate clues pair)",
                 "review clues waiting for it (geocurate review list)"]
    return (f"export {params.name!r} has no usable example for stage {stage}: {what} under {where} ({counts}, "
            f"clue pairs {usable.clue_pairs}); {'; or '.join(hints)}")


def required_stages(stages: tuple[str, ...]) -> list[str]:
    """The requested stages that must have examples, location first. The reasoning stage may be empty when the
    location stage follows (training skips it and starts stage 2 from the base model, training/stages.py), so it
    is required only when it is all that was asked for."""
    return [stage for stage in ("location", "reasoning")
            if stage in stages and (stage == "location" or "location" not in stages)]


def check_trainable(session: Session, params: ExportParams, stages: tuple[str, ...] = TRAIN_STAGES) -> Usable:
    """Raise EmptyExport when a required stage of `stages` would get no example from the store; returns the
    counts."""
    usable = usable_counts(session, params)
    for stage in required_stages(stages):
        empty = usable.kept == 0 if stage == "location" else usable.clue_pairs == 0
        if empty:
            raise EmptyExport(empty_stage_message(params, usable, stage))
    return usable


def check_built(session: Session, params: ExportParams, counts: dict, stages: tuple[str, ...]) -> None:
    """Raise EmptyExport when the built train split of a required stage of `stages` is empty (before the folder is put in
    place, so a refused export leaves no folder)."""
    for stage in empty_stages(counts, stages):
        raise EmptyExport(empty_stage_message(params, usable_counts(session, params), stage, train_examples=0))


def empty_stages(counts: dict, stages: tuple[str, ...] = TRAIN_STAGES) -> list[str]:
    """Required stages (of a training of `stages`) whose train split of a built export is empty: what
    `geocurate export` warns about when it was not asked to train."""
    train = {"location": counts["location"]["train"], "reasoning": counts["reasoning"]["train"]}
    return [stage for stage in required_stages(stages) if train[stage] == 0]
