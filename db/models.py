"""The store's tables. The store is the source of truth: every constraint here exists so that re-running work
(a task delivered twice, a re-ingested folder, a re-pushed review) cannot duplicate or lose a row."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    country_code: Mapped[str | None] = mapped_column(String(2), index=True)
    city: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="ingested", index=True)  # ingested/scored/quarantined
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScorerVersion(Base):
    """What a scorer_version hash stands for, so a score can always be traced to its models and parameters."""

    __tablename__ = "scorer_versions"

    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The 150 class weights themselves (params holds only their digest, which is part of the version hash): kept so
    # `versions list` can show what changed and a rescore can start from them. Null on versions registered before.
    weights: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("image_id", "scorer_version", name="uq_scores_image_version"),
        Index("ix_scores_version_locatability", "scorer_version", "locatability"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    scorer_version: Mapped[str] = mapped_column(String(32))
    locatability: Mapped[float] = mapped_column(Float)
    class_ratios: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"class index": pixel fraction}
    decision: Mapped[str] = mapped_column(String(10))  # keep / drop / review
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageEmbedding(Base):
    """open_clip image embeddings, computed once and reused by clue pairing and near-duplicate removal."""

    __tablename__ = "image_embeddings"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised


class Clue(Base):
    __tablename__ = "clues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the normalised text
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(200))
    country_hint: Mapped[str | None] = mapped_column(String(2))
    image_ref: Mapped[str | None] = mapped_column(Text)  # image path or sha256 as given in the input
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    entities: Mapped[list[Any]] = mapped_column(JSON, default=list)
    geo_ok: Mapped[bool] = mapped_column(Boolean, default=False)
    country: Mapped[str | None] = mapped_column(String(2), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)  # accepted / rejected / review
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CluePair(Base):
    """A clue–image pair for the reasoning stage: given in the input, or found by embedding similarity."""

    __tablename__ = "clue_pairs"
    __table_args__ = (UniqueConstraint("clue_id", "image_id", name="uq_clue_pairs"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clue_id: Mapped[int] = mapped_column(ForeignKey("clues.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(20))  # given / embedding
    similarity: Mapped[float | None] = mapped_column(Float)


class ReviewTask(Base):
    __tablename__ = "review_tasks"
    __table_args__ = (UniqueConstraint("item_kind", "item_id", name="uq_review_tasks_item"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_kind: Mapped[str] = mapped_column(String(10))  # image / clue
    item_id: Mapped[int] = mapped_column(Integer)
    ls_project_id: Mapped[int | None] = mapped_column(Integer)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    reason: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[float | None] = mapped_column(Float)  # closeness to the threshold; most uncertain first
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)  # pending/done/conflicted/retired
    # the scorer version whose review band routed the item (None for clues); a pending task of another version
    # than the current one is retired, and `retired_by` keeps the version that retired it
    scorer_version: Mapped[str | None] = mapped_column(String(32))
    retired_by: Mapped[str | None] = mapped_column(String(32))
    final_label: Mapped[str | None] = mapped_column(String(40))
    final_country: Mapped[str | None] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Annotation(Base):
    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_annotation_id: Mapped[int] = mapped_column(Integer, unique=True)
    review_task_id: Mapped[int] = mapped_column(ForeignKey("review_tasks.id", ondelete="CASCADE"), index=True)
    label: Mapped[str | None] = mapped_column(String(40))
    country: Mapped[str | None] = mapped_column(String(2))
    annotator: Mapped[str | None] = mapped_column(String(200))
    lead_time: Mapped[float | None] = mapped_column(Float)  # seconds the annotator spent
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Quarantine(Base):
    """Rejected input: kept with its reason, never silently dropped. The fingerprint makes re-runs idempotent."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    item_kind: Mapped[str] = mapped_column(String(20))  # image / clue / metadata
    reference: Mapped[str] = mapped_column(Text)  # raw input reference: path, file:line, sha256
    reason: Mapped[str] = mapped_column(Text)  # a code from db.quarantine.REASONS
    detail: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)  # where the item came from: file:line, folder
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    scorer_version: Mapped[str | None] = mapped_column(String(32))
    threshold: Mapped[float] = mapped_column(Float)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="building")  # building / done / failed
    # what `geocurate run` selected for it (curation.export.plan): a second run with the same selection is a no-op
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    builder: Mapped[str | None] = mapped_column(String(200))  # host:pid building it
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # renewed while it builds
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExportItem(Base):
    """What went into an export, row for row with its files: a record written once by the exporter, in the
    export's transaction, from ids it has just read, and never changed (exports are immutable).

    Deliberately without foreign keys: PostgreSQL checks a foreign key row by row, and at 600k items those checks
    were three quarters of writing them (15.6 s against 4.2 s) and the largest cost of a 1M-image export. They
    would guard nothing geocurate does (it never deletes images, clues or exports), and their cascades would
    rewrite a finished export's record if a row were deleted by hand. The unique constraint's leading column
    serves lookups by export."""

    __tablename__ = "export_items"
    __table_args__ = (UniqueConstraint("export_id", "dataset", "image_id", "clue_id", name="uq_export_items"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[int] = mapped_column(Integer)  # exports.id
    dataset: Mapped[str] = mapped_column(String(20))  # location / reasoning
    split: Mapped[str] = mapped_column(String(10))  # train / val / test
    image_id: Mapped[int] = mapped_column(Integer)  # images.id
    clue_id: Mapped[int | None] = mapped_column(Integer)  # clues.id (reasoning items)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[int | None] = mapped_column(ForeignKey("exports.id", ondelete="SET NULL"))
    export_path: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(20))  # reasoning / location / eval
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued/running/done/failed
    adapter_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Which export the adapters were trained for (its manifest name), the base model they sit on (hub id or absolute
    # path) and the sha256 over the adapter folder's files: eval and predict refuse a folder that does not match.
    export_name: Mapped[str | None] = mapped_column(Text)
    base_model: Mapped[str | None] = mapped_column(Text)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))


class Run(Base):
    """One pipeline submission; its batches' rows drive progress and hand-over to the next step."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), default="pipeline")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    step: Mapped[str] = mapped_column(String(20), default="ingest")  # ingest/score/route/export/train/done
    status: Mapped[str] = mapped_column(String(20), default="running")  # running/done/failed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A unit of queued work, claimed with a lease so that work taken by a dead worker is done again, once."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("run_id", "step", "seq", name="uq_batches_run_step_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(20))
    seq: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)  # queued/claimed/done/failed
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the step function's counts, for progress/summary
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TaskFailure(Base):
    """A task that failed its last retry, shown by `geocurate status`."""

    __tablename__ = "task_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(200))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
