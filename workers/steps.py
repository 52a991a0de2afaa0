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
    """New images in batches; clue pairing when the run brought clues or accepted clues wait for a pair (one
    accepted in review since the last run); and always one `converge` batch, which learns the current scorer
    version (it needs the models' identities, so it runs where the models are) and carries stored scores over to
    it, so that every run's routing and export cover every image under the current version."""
    from db.clues import clues_needing_pairs, unlinked_image_refs
    from db.images import ingested_image_ids

    payloads: Payloads = [{"image_ids": ids} for ids in chunks(ingested_image_ids(session), settings.batch_size)]
    converging = "route" in params.get("steps", ())  # a pipeline run; a run of the score step alone only scores
    if params.get("clues") or (converging and (clues_needing_pairs(session) or unlinked_image_refs(session))):
        payloads.append({"pair_clues": True})
    if converging:
        payloads.append({"converge": True})
    return payloads


def work_score(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    if claim.payload.get("pair_clues"):
        from curation.clip import load_clip
        from curation.pairing import pair_clues_explained

        summary = pair_clues_explained(session, load_clip(settings), settings.pairing_top_k,
                                       settings.pairing_min_similarity,
                                       image_base=Path(params["clues"]).parent if params.get("clues") else None)
        result: dict[str, Any] = {"pairs": summary.added}
        if not summary.added and summary.why_none():
            result["pairs_note"] = summary.why_none()  # shown by `geocurate run` (non-numbers are not summed)
        return result
    if claim.payload.get("converge"):
        return converge(session, settings)
    from curation.score_store import score_images

    scorer = process.get_scorer(settings)
    ids = claim.payload["image_ids"]
    return {"images": len(ids), "scorer_version": scorer.version, **as_counts(score_images(session, scorer, ids))}


def converge(session: Session, settings: Settings) -> dict[str, Any]:
    """The current scorer version, with every image scored before under the same segmentation carried over to it
    from its stored class ratios (curation.score_store.carry_over_scores: no model runs). Images segmented by other
    models are counted, not scored here: `geocurate score` segments them."""
    from curation.score_store import carry_over_scores
    from db.scores import count_unscored_images

    scorer = process.get_scorer(settings)
    carried = carry_over_scores(session, scorer.version, scorer.params, scorer.weights)
    result: dict[str, Any] = {"scorer_version": scorer.version, "carried_over": carried}
    unscored = count_unscored_images(session, scorer.version)
    if unscored:
        result["unscored_other_models"] = unscored
    return result


def scorer_version_of(session: Session, run_id: int) -> str | None:
    """The run's scorer version: the converge batch's (every run has one), else any scoring batch's."""
    results = batches.step_results(session, run_id, "score")
    for result in sorted(results, key=lambda r: "carried_over" not in r):
        if result.get("scorer_version"):
            return result["scorer_version"]
    return None


# --- route -----------------------------------------------------------------------------------------------------------

def plan_single(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    return [{}]


def work_route(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Retire review tasks of other scorer versions, then queue the current version's band (an item whose task was
    retired unanswered is queued again), then push to Label Studio when it is configured."""
    from labeling.retire import retire_stale_tasks
    from labeling.routing import route_for_review

    version = scorer_version_of(session, claim.run_id)
    if version is None:
        return {"routed": 0, "reason": "no image is scored"}
    session.commit()  # no read transaction held while the retirement writes on its own connections (SQLite)
    retired = retire_stale_tasks(settings.database_url, version, settings=settings)
    result: dict[str, Any] = {"scorer_version": version, "retired": retired.retired,
                              "retired_deleted_in_label_studio": retired.deleted,
                              "retired_kept_annotated": retired.kept_annotated}
    routed = route_for_review(session, version, settings)
    result.update(as_counts(routed))
    result["routed"] = routed.images_queued + routed.clues_queued
    if settings.label_studio_url:
        from labeling.push import push_tasks

        session.commit()  # the push reads the routed rows through its own connection
        result["pushed"] = as_counts(push_tasks(settings.database_url, settings=settings))
    return result


# --- export and training ---------------------------------------------------------------------------------------------

def plan_export(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    return [{"name": params["export"]}]


def work_export(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Build the export, unless one of that name was built from this very selection (nothing to do); a name
    holding other content is refused with what changed (exports are immutable)."""
    from curation.export import ExportParams, build_export
    from curation.export.plan import compare, plan_selection, record_selection
    from db.exports import export_by_id_or_name
    from geocurate.errors import UserError

    name = claim.payload["name"]
    version = scorer_version_of(session, claim.run_id) if params.get("kind") != "export" else None
    # stages this run trains next: the build refuses an export they could not use (curation.export.readiness)
    trains = tuple(step.split(":", 1)[1] for step in params.get("steps", ()) if step.startswith("train:"))
    export_params = ExportParams.from_settings(settings, name, scorer_version=version, train_stages=trains,
                                               pending=params.get("pending", "exclude"))
    selection = plan_selection(session, export_params)
    existing = export_by_id_or_name(session, name)
    if existing is not None and existing.status == "done":
        changed = compare(existing, selection)
        if changed is None:
            return {"export": name, "unchanged": 1, "content_hash": existing.content_hash or ""}
        raise UserError(f"export {name!r} already exists with other content: {changed}; exports are immutable, "
                        f"choose a new name (--export NAME)")
    session.commit()  # the build writes through its own connections
    built = build_export(export_params, settings.database_url)
    if built.export_id is not None:
        record_selection(session, built.export_id, selection)
    return {"export": name, **as_counts(built)}


def plan_train(session: Session, run_id: int, params: dict[str, Any], settings: Settings) -> Payloads:
    # Read the step from the database: the run object in this session may predate the hand-over's UPDATE.
    step = batches.current_step(session, run_id)
    return [{"stage": step.split(":", 1)[1], "export": params["export"]}]


def work_train(session: Session, claim: Claim, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Train one stage on the export; a pipeline run whose export already has this stage trained (an unchanged
    export, run again) does nothing: `geocurate train` trains again on purpose."""
    from db.exports import export_by_id_or_name
    from db.training import latest_done_for_export
    from training.stages import train_stage

    stage = claim.payload["stage"]
    export = export_by_id_or_name(session, claim.payload["export"])
    if export is None:
        raise LookupError(f"export {claim.payload['export']!r} does not exist; build it first (geocurate export NAME)")
    if params.get("kind") != "train":
        done = latest_done_for_export(session, export.id, stage)
        if done is not None:
            return {"stage": stage, "already_trained": 1, "training_run": done.id}
    session.commit()  # training runs for long: hold no transaction open meanwhile
    outcome = train_stage(Path(export.path), stage, settings, export_id=export.id)
    return {"stage": stage, **as_counts(outcome)}


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
