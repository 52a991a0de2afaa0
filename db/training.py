"""training_runs rows: every training stage and every evaluation is one row with its config, status, adapter,
last checkpoint and metrics, so a trained adapter can always be traced to the export and settings that made it,
and a crashed stage is picked up again by the next run of the same stage on the same export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Export, TrainingRun, utcnow

RESUMABLE = ("queued", "running", "failed")


def export_id_for_path(session: Session, export_path: Path) -> int | None:
    """The exports row written for this folder, if the export was built by this store."""
    resolved = str(Path(export_path).resolve())
    for export_id, path in session.execute(select(Export.id, Export.path)):
        if path and str(Path(path).resolve()) == resolved:
            return export_id
    return None


def start_run(session: Session, *, stage: str, export_path: str | None, export_id: int | None,
              config: dict[str, Any], adapter_path: str | None = None, export_name: str | None = None,
              base_model: str | None = None) -> int:
    run = TrainingRun(
        stage=stage, export_path=export_path, export_id=export_id, config=config, adapter_path=adapter_path,
        status="running", started_at=utcnow(), metrics={}, export_name=export_name, base_model=base_model,
    )
    session.add(run)
    session.flush()
    return run.id


def resumable_run(session: Session, *, stage: str, export_path: str, adapter_path: str) -> TrainingRun | None:
    """The newest unfinished run of this stage on this export into the same adapter folder."""
    return session.scalars(
        select(TrainingRun)
        .where(TrainingRun.stage == stage, TrainingRun.export_path == export_path,
               TrainingRun.adapter_path == adapter_path, TrainingRun.status.in_(RESUMABLE))
        .order_by(TrainingRun.id.desc())
        .limit(1)
    ).first()


def restart_run(session: Session, run_id: int, config: dict[str, Any]) -> None:
    run = session.get(TrainingRun, run_id)
    run.status, run.error, run.finished_at, run.config = "running", None, None, config


def set_checkpoint(session: Session, run_id: int, checkpoint_path: str) -> None:
    session.get(TrainingRun, run_id).checkpoint_path = checkpoint_path


def finish_run(session: Session, run_id: int, metrics: dict[str, Any], adapter_path: str | None = None,
               adapter_sha256: str | None = None) -> None:
    """Mark the run done; a training stage also records its adapter folder and the sha256 over its files, which
    evaluation and inference compare with the folder before trusting it."""
    run = session.get(TrainingRun, run_id)
    run.status, run.metrics, run.finished_at, run.error = "done", metrics, utcnow(), None
    if adapter_path is not None:
        run.adapter_path = adapter_path
    if adapter_sha256 is not None:
        run.adapter_sha256 = adapter_sha256


def fail_run(session: Session, run_id: int, error: str) -> None:
    run = session.get(TrainingRun, run_id)
    run.status, run.error, run.finished_at = "failed", error, utcnow()


def add_metrics(session: Session, run_id: int, key: str, metrics: dict[str, Any]) -> None:
    """Attach metrics under `key` (e.g. the test-split evaluation of a trained stage) without losing the others."""
    run = session.get(TrainingRun, run_id)
    run.metrics = {**(run.metrics or {}), key: metrics}


def latest_done_run(session: Session, *, stage: str, adapter_path: str | None = None,
                    export_name: str | None = None) -> TrainingRun | None:
    """The newest finished run of a stage, into an adapter folder and/or for an export."""
    stmt = select(TrainingRun).where(TrainingRun.stage == stage, TrainingRun.status == "done")
    if adapter_path is not None:
        stmt = stmt.where(TrainingRun.adapter_path == adapter_path)
    if export_name is not None:
        stmt = stmt.where(TrainingRun.export_name == export_name)
    return session.scalars(stmt.order_by(TrainingRun.id.desc()).limit(1)).first()


def get_run(session: Session, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def latest_done_for_export(session: Session, export_id: int, stage: str) -> TrainingRun | None:
    """The newest finished run of a stage on an export row (a pipeline re-run of an unchanged export skips it)."""
    return session.scalars(
        select(TrainingRun)
        .where(TrainingRun.export_id == export_id, TrainingRun.stage == stage, TrainingRun.status == "done")
        .order_by(TrainingRun.id.desc())
        .limit(1)
    ).first()
