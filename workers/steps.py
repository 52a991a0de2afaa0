"""What each pipeline step plans and does, as plain functions over the parts (curation/, labeling/, training/).

A step *plans* its batches (payloads stored as batch rows) when the run reaches it, and *works* one batch inside the
caller's transaction, returning counts that are stored on the batch row (progress bars and summaries read them).
Planning reads the store, never a model, so any machine (an I/O worker finishing the last ingest batch) can plan the
GPU step that follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import batches
from db.batches import Claim
from geocurate.settings import Settings
from workers import process

Payloads = list[dict[str, Any]]


@dataclass(frozen=True)
class Step:
    task: str  # the Celery task that works this step's batches (its queue comes from workers.routing)
    plan: Callable[[Session, int, dict[str, Any], Settings], Payloads]
    work: Callable[[Session, Claim, dict[str, Any], Settings], dict[str, Any]]
    critical: bool  # a failed batch fails the run (later steps need its output); else the run goes on


def as_counts(value: Any) -> dict[str, Any]:
    """A step function's return value as JSON for the batch row."""
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "_asdict"):
        value = value._asdict()
    elif isinstance(value, (int, float, str)):
        value = {"value": value}
    elif not isinstance(value, dict):
        value = {key: getattr(value, key) for key in ("id", "name", "path", "status", "counts") if hasattr(value, key)}
    return {str(k): v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)
            for k, v in value.items()}


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[start : start + size]) for start in range(0, len(items), max(size, 1))]


# --- ingest ----------------------------------------------------------------------------------------------------------

def plan_ingest(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    """One batch for the folder itself (refused files, metadata rows that match no image), then the image files in
    batches, then the clue file."""
    from curation.files import discover_images

    discovery = discover_images(Path(params["directory"]), settings.allow_outside_root)
    paths = [str(p) for p in discovery.files]
    payloads: Payloads = [{"folder": True}]
    payloads += [{"paths": chunk} for chunk in chunks(paths, settings.batch_size)]
    if params.get("clues"):
        payloads.append({"clues": params["clues"]})
    return payloads


@lru_cache(maxsize=4)
def _prepared_folder(run_id: int, directory: str, metadata: str | None, encoding: str | None, allow: bool) -> Any:
    """The folder's listing and metadata match, computed once per worker process and run."""
    from curation.ingest import prepare_folder

    return prepare_folder(directory, metadata, encoding, allow)


def work_ingest(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from curation.ingest import ImageLimits, ingest_images, quarantine_listing

    payload = claim.payload
    if "clues" in payload:
        from curation.clues import get_gazetteer, ingest_clues

        summary = ingest_clues(session, Path(payload["clues"]), get_gazetteer(settings),
                               encoding=params.get("encoding"))
        return {"clues": as_counts(summary)}
    discovery, match = _prepared_folder(claim.run_id, params["directory"], params.get("metadata"),
                                        params.get("encoding"), settings.allow_outside_root)
    if payload.get("folder"):
        summary = quarantine_listing(session, discovery, match)
        result: dict[str, Any] = {"files": len(discovery.files) + len(discovery.refused), **as_counts(summary)}
        if match is not None:
            result["metadata"] = match.counts()
        return result
    summary = ingest_images(session, [Path(p) for p in payload["paths"]], match, discovery.root,
                            params.get("source"), ImageLimits.from_settings(settings))
    return {"images": len(payload["paths"]), **as_counts(summary)}


# --- score -----------------------------------------------------------------------------------------------------------

def plan_score(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    from db.images import ingested_image_ids

    payloads: Payloads = [{"image_ids": ids} for ids in chunks(ingested_image_ids(session), settings.batch_size)]
    if params.get("clues"):
        payloads.append({"pair_clues": True})
    return payloads


def work_score(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    if claim.payload.get("pair_clues"):
        from curation.clip import load_clip
        from curation.pairing import pair_clues

        pairs = pair_clues(session, load_clip(settings), settings.pairing_top_k, settings.pairing_min_similarity,
                           image_base=Path(params["clues"]).parent)
        return {"pairs": pairs} if isinstance(pairs, int) else {"pairs": as_counts(pairs)}
    from curation.score_store import score_images

    scorer = process.get_scorer(settings)
    ids = claim.payload["image_ids"]
    return {"images": len(ids), "scorer_version": scorer.version, **as_counts(score_images(session, scorer, ids))}


def scorer_version_of(session: Session, run_id: int) -> str | None:
    for result in batches.step_results(session, run_id, "score"):
        if result.get("scorer_version"):
            return result["scorer_version"]
    return None


# --- route -----------------------------------------------------------------------------------------------------------

def carry_over(session: Session, version: str, settings: Settings) -> dict[str, Any]:
    """Images scored before under the same segmentation join this run's scorer version (see carry_over_scores),
    so that its routing and export cover them too."""
    from curation.locatability import load_weights
    from curation.score_store import carry_over_scores
    from db.scores import scorer_params

    try:
        return {"carried_over": carry_over_scores(session, version, scorer_params(session, version),
                                                  load_weights(settings))}
    except ValueError as exc:  # the weights setting changed after this run scored
        return {"carried_over": 0, "carry_over_skipped": str(exc)}


def plan_single(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    return [{}]


def work_route(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from labeling.routing import route_for_review

    version = scorer_version_of(session, claim.run_id)
    if version is None:
        return {"routed": 0, "reason": "nothing was scored in this run"}
    result = {"scorer_version": version, **carry_over(session, version, settings)}
    result.update(as_counts(route_for_review(session, version, settings)))
    if settings.label_studio_url:
        from labeling.push import push_tasks

        session.commit()  # the push reads the routed rows through its own connection
        result["pushed"] = as_counts(push_tasks(settings.database_url, settings=settings))
    return result


# --- export and training ---------------------------------------------------------------------------------------------

def plan_export(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    return [{"name": params["export"]}]


def work_export(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from curation.export import ExportParams, build_export

    version = scorer_version_of(session, claim.run_id) if params.get("kind") != "export" else None
    built = build_export(ExportParams.from_settings(settings, claim.payload["name"], scorer_version=version),
                         settings.database_url)
    return {"export": claim.payload["name"], **as_counts(built)}


def plan_train(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    # Read the step from the database: the run object in this session may predate the hand-over's UPDATE.
    step = batches.current_step(session, run_id)
    return [{"stage": step.split(":", 1)[1], "export": params["export"]}]


def work_train(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from db.exports import export_by_id_or_name
    from training.stages import train_stage

    export = export_by_id_or_name(session, claim.payload["export"])
    if export is None:
        raise LookupError(f"export {claim.payload['export']!r} does not exist; build it first (geocurate export NAME)")
    session.commit()  # training runs for long: hold no transaction open meanwhile
    outcome = train_stage(Path(export.path), claim.payload["stage"], settings, export_id=export.id)
    return {"stage": claim.payload["stage"], **as_counts(outcome)}


STEPS: dict[str, Step] = {
    "ingest": Step("workers.tasks.ingest_batch", plan_ingest, work_ingest, critical=False),
    "score": Step("workers.tasks.score_batch", plan_score, work_score, critical=False),
    "route": Step("workers.tasks.route_for_review", plan_single, work_route, critical=False),
    "export": Step("workers.tasks.build_export", plan_export, work_export, critical=True),
    "train": Step("workers.tasks.train_stage", plan_train, work_train, critical=True),
}


def step_of(name: str) -> Step:
    """`train:reasoning` and `train:location` are both the `train` step with a different stage."""
    return STEPS[name.split(":", 1)[0]]


def pipeline_steps(export: str | None, train: bool, stages: Sequence[str] = ("reasoning", "location")) -> list[str]:
    steps = ["ingest", "score", "route"]
    if export:
        steps.append("export")
    if train:
        steps += [f"train:{stage}" for stage in stages]
    return steps
