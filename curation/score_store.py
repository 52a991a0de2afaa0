"""Scoring against the store: which images still need a score, scoring a batch of them, and rescoring stored class
ratios under new weights or a new threshold without running any model.

Every function here is idempotent: an (image, scorer version) already scored is skipped, a corrupt file is
quarantined once, and the rest of a batch is scored whatever happens to one image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.decisions import DecisionRule
from curation.embeddings import store_embeddings
from curation.files import local_path
from curation.locatability import validate_weights, weights_digest
from curation.scoring import BadImage, Scorer, version_of
from db.images import set_status
from db.models import Image
from db.quarantine import quarantine
from db.scores import (
    add_scores,
    image_id_ranges,
    insert_rescored,
    register_scorer_version,
    scored_image_ids,
    scorer_params,
    scorer_versions,
    scorer_weights,
    unscored_image_ids,
)

# Scorer parameters applied to stored class ratios; every other one (models, checkpoints, prompts, mask generator)
# changes the ratios themselves.
APPLIED_TO_RATIOS = ("weights", "threshold", "review_band")


@dataclass
class ScoreSummary:
    scored: int = 0
    skipped: int = 0
    quarantined: int = 0


@dataclass
class RescoreSummary:
    scorer_version: str
    rows: int


def pending_image_ids(session: Session, scorer_version: str, limit: int | None = None) -> list[int]:
    """Ingested, not quarantined, not yet scored under this scorer version."""
    return unscored_image_ids(session, scorer_version, limit)


def score_images(session: Session, scorer: Scorer, image_ids: Sequence[int]) -> ScoreSummary:
    """Score these images under `scorer` and write their rows (plus whole-image CLIP embeddings when the scorer
    computed them). Already-scored ids are skipped; unreadable or too-small files are quarantined and their image
    marked quarantined; everything else is scored and marked scored."""
    summary = ScoreSummary()
    ids = list(dict.fromkeys(image_ids))
    done = scored_image_ids(session, scorer.version, ids)
    summary.skipped = len(done)
    todo = [i for i in ids if i not in done]
    if not todo:
        return summary
    uris = dict(session.execute(select(Image.id, Image.uri).where(Image.id.in_(todo))).tuples().all())
    good_ids, images, bad_ids = [], [], []
    for image_id in todo:
        if image_id not in uris:
            summary.skipped += 1  # deleted since it was queued
            continue
        try:
            images.append(scorer.open(local_path(uris[image_id])))
            good_ids.append(image_id)
        except BadImage as exc:
            bad_ids.append(image_id)
            quarantine(session, "image", uris[image_id], exc.reason, detail=str(exc), source="scoring")
    if bad_ids:
        set_status(session, bad_ids, "quarantined")
        summary.quarantined = len(bad_ids)
    if not images:
        return summary
    register_scorer_version(session, scorer.version, scorer.params, scorer.weights)
    try:
        results = scorer.score(images)
    except Exception:  # noqa: BLE001 - which image broke it, if one did, is found below
        good_ids, results = _score_each(session, scorer, good_ids, images, uris, summary)
    summary.scored = add_scores(session, (
        dict(image_id=image_id, scorer_version=scorer.version, locatability=result.locatability,
             class_ratios={str(k): v for k, v in sorted(result.class_ratios.items())}, decision=result.decision)
        for image_id, result in zip(good_ids, results)
    ))
    set_status(session, good_ids, "scored")
    embedding_version = scorer.embedding_version
    vectors = {i: r.image_embedding for i, r in zip(good_ids, results) if r.image_embedding is not None}
    if embedding_version and vectors:
        store_embeddings(session, vectors, embedding_version)
    return summary


def _score_each(session: Session, scorer: Scorer, ids: list[int], images: list, uris: dict[int, str],
                summary: ScoreSummary) -> tuple[list[int], list]:
    """A batch whose scoring raised is scored again one image at a time, so one image that breaks the segmenter is
    quarantined with the error and the others are scored. When every image fails on its own, the fault is not in
    the images (a model, the device, a bug): the error is raised and the batch fails, loudly."""
    scored_ids, results, failures = [], [], []
    for image_id, image in zip(ids, images):
        try:
            results.extend(scorer.score([image]))
            scored_ids.append(image_id)
        except Exception as exc:  # noqa: BLE001 - kept with the image it belongs to
            failures.append((image_id, exc))
    if not scored_ids:
        raise failures[0][1]
    for image_id, exc in failures:
        quarantine(session, "image", uris[image_id], "scoring_failed", f"{type(exc).__name__}: {exc}",
                   source="scoring")
    set_status(session, [image_id for image_id, _ in failures], "quarantined")
    summary.quarantined += len(failures)
    return scored_ids, results


def carry_over_scores(session: Session, scorer_version: str, params: dict[str, Any], weights: Sequence[float]) -> int:
    """Give images scored under an earlier version with the same segmentation a row under `scorer_version`,
    computed from their stored class ratios in the database (no model). Without it, changing the threshold, the
    review band or the weights would leave every image scored before out of the new version's routing and exports,
    or send them all through the segmenter again. Images segmented differently are left to `unscored_image_ids`.
    Returns the rows added (0 once everything is carried over: only missing rows are computed)."""
    checked = validate_weights(list(weights))
    if weights_digest(checked) != params["weights"]:
        raise ValueError(f"these weights are not the ones of scorer {scorer_version}")
    register_scorer_version(session, scorer_version, params, checked)
    low, high = params["review_band"]
    added = 0
    for version, other in scorer_versions(session):
        if version != scorer_version and _segmentation(other) == _segmentation(params):
            added += insert_rescored(session, version, scorer_version, checked, params["threshold"], low, high)
    return added


def _segmentation(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key not in APPLIED_TO_RATIOS}


def rescore_from_ratios(session: Session, weights: Sequence[float] | None, scorer_version_from: str,
                        threshold: float | None = None, review_band: tuple[float, float] | None = None,
                        parallel: int = 1) -> RescoreSummary:
    """New score rows for every image scored under `scorer_version_from`, computed from its stored class ratios with
    new weights (and optionally a new threshold / review band) inside the database. No model is loaded. The new
    version is the old one's parameters with the weights and decision rule replaced: the same version a model run
    with those weights would get, since its rows would be the same. It stores its threshold, band and weights, so
    routing, review tasks, reports and exports of it apply them whatever the environment says. `weights` None keeps
    the source version's (ValueError when it was registered without them).

    `parallel` > 1 (PostgreSQL) splits the image ids into that many ranges, each inserted on its own connection and
    committed on its own: the server then uses as many cores. A failure leaves whole ranges done; re-running
    completes the rest (inserts ignore rows already there)."""
    params: dict[str, Any] | None = scorer_params(session, scorer_version_from)
    if params is None:
        raise ValueError(f"unknown scorer version {scorer_version_from!r}: nothing was scored under it")
    if weights is None:
        weights = scorer_weights(session, scorer_version_from)
        if weights is None:
            raise ValueError(f"scorer version {scorer_version_from} was registered without its weights: "
                             "give them with --weights FILE")
    checked = validate_weights(list(weights))
    low, high = review_band if review_band is not None else params["review_band"]
    threshold = params["threshold"] if threshold is None else threshold
    rule = DecisionRule(threshold, low, high)  # validates: values in [0, 1], low <= high
    new_params = {**params, "weights": weights_digest(checked), **rule.as_params()}
    new_version = version_of(new_params)
    register_scorer_version(session, new_version, new_params, checked)
    arguments = (scorer_version_from, new_version, checked, rule.threshold, rule.review_low, rule.review_high)
    if parallel <= 1 or session.get_bind().dialect.name != "postgresql":
        return RescoreSummary(new_version, insert_rescored(session, *arguments))
    session.commit()  # the version row first, visible to every range's connection
    return RescoreSummary(new_version, _parallel_rescore(session.get_bind(), arguments,
                                                         image_id_ranges(session, scorer_version_from, parallel)))


def current_version(session: Session, segmenter: str, rule: DecisionRule, weights: Sequence[float]) -> str | None:
    """The newest registered version that scores the way the present settings would: same segmenter route, same
    weights, same threshold and band. Found from stored parameters, without loading a model, so `versions list`
    and `export` can name it; the models themselves are compared when `score` runs (it adds a new version when
    they changed)."""
    digest = weights_digest(validate_weights(list(weights)))
    for version, params in scorer_versions(session):
        if params.get("segmenter") == segmenter and params.get("weights") == digest \
                and DecisionRule.from_params(params) == rule:
            return version
    return None


def _parallel_rescore(bind, arguments: tuple, ranges: list[tuple[int, int]]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    def one(id_range: tuple[int, int]) -> int:
        with Session(bind) as part, part.begin():
            return insert_rescored(part, *arguments, image_ids=id_range)

    with ThreadPoolExecutor(max_workers=max(1, len(ranges))) as pool:
        return sum(pool.map(one, ranges))
