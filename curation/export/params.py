"""Everything an export depends on, as values: the library never reads the process's settings, so a worker, the CLI
and a test build the same export from the same values, and the values that shape the files are what the manifest's
content hash covers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from curation.decisions import PENDING_POLICIES, PendingPolicy, stored_rule
from curation.splits import parse_split
from geocurate.errors import UserError

TRAIN_STAGES = ("reasoning", "location")


@dataclass(frozen=True)
class ClipSettings:
    """The open_clip model that computes embeddings the store lacks (field names as in Settings, which
    curation.clip.load_clip reads)."""

    clip_model: str
    clip_pretrained: str | None
    demo_models: bool
    device: str
    score_dtype: str


@dataclass(frozen=True)
class ExportParams:
    """A valid export request: construction raises UserError for a bad name, threshold, split or image mode.

    `dedup_similarity` None keeps near-duplicates. `scorer_version` None means the store's latest, `threshold` and
    `review_band` None the scorer version's own (resolved when the build starts, `resolved`): the environment's
    threshold never decides an export of a version that recorded its own. `pending` is the policy for images
    waiting for review in the band: `exclude` leaves them out, `score` lets the score decide. `embedding_version` picks stored embeddings by model version (default: `clip`'s, which then
    loads). `lease_seconds` and `heartbeat_seconds` are the build guard's: a build silent for a lease loses its name.
    """

    name: str
    threshold: float | None
    out_dir: Path
    images: Literal["link", "copy"]
    dedup_similarity: float | None
    h3_resolution: int
    lease_seconds: float
    heartbeat_seconds: float
    scorer_version: str | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    embedding_version: str | None = None
    clip: ClipSettings | None = field(default=None, compare=False)
    review_band: tuple[float, float] | None = None
    pending: PendingPolicy = "exclude"
    # stages to be trained on the export: each must get an example, or the build fails before writing the folder
    train_stages: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        name = self.name
        if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
            raise UserError(f"export name {name!r} must be letters, digits, '.', '_' or '-'")
        threshold = None if self.threshold is None else float(self.threshold)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold {threshold} must be a locatability between 0 and 1")
        unknown = [stage for stage in self.train_stages if stage not in TRAIN_STAGES]
        if unknown:
            raise UserError(f"unknown training stage {unknown[0]!r}: expected {' or '.join(TRAIN_STAGES)}")
        if self.pending not in PENDING_POLICIES:
            raise UserError(f"pending must be one of {', '.join(PENDING_POLICIES)}, not {self.pending!r}")
        if self.review_band is not None:
            low, high = (float(v) for v in self.review_band)
            if not 0.0 <= low <= high:
                raise UserError(f"review band [{low}, {high}) must be 0 <= low <= high")
            object.__setattr__(self, "review_band", (low, high))
        if self.images not in ("link", "copy"):
            raise UserError(f"images must be link or copy, not {self.images!r}")
        if self.dedup_similarity is not None and self.embedding_version is None and self.clip is None:
            raise UserError("near-duplicate removal needs an embedding version or an open_clip model")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "split", parse_split(self.split))
        object.__setattr__(self, "out_dir", Path(self.out_dir))

    @classmethod
    def from_settings(cls, settings, name: str, *, threshold: float | None = None, scorer_version: str | None = None,
                      split: str | tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                      out_dir: Path | None = None, images: Literal["link", "copy"] | None = None, dedup: bool = True,
                      embedding_version: str | None = None, pending: PendingPolicy = "exclude",
                      train_stages: tuple[str, ...] = ()) -> ExportParams:
        """The request of `geocurate export` and of a pipeline's export step: what is not given comes from
        `settings` (geocurate.settings.Settings), except the threshold and review band, which are the scorer
        version's (an explicit `threshold` overrides the version's)."""
        clip = ClipSettings(settings.clip_model, settings.clip_pretrained, settings.demo_models, settings.device,
                            settings.score_dtype)
        return cls(name=name, threshold=threshold,
                   out_dir=Path(out_dir or settings.export_dir), images=images or settings.export_images,
                   dedup_similarity=settings.dedup_similarity if dedup else None,
                   h3_resolution=settings.h3_resolution, lease_seconds=settings.lease_seconds,
                   heartbeat_seconds=settings.heartbeat_seconds, scorer_version=scorer_version, split=split,
                   seed=seed, embedding_version=embedding_version, clip=clip, pending=pending,
                   train_stages=tuple(train_stages))

    def with_scorer_version(self, version: str) -> ExportParams:
        return replace(self, scorer_version=version)

    def resolved(self, session: Session) -> ExportParams:
        """The request with its scorer version (the store's latest when none was named), and the threshold and
        review band that version stores where the request left them open. A version without a stored rule (scores
        written without registration) needs an explicit threshold and has no band, so nothing counts as pending.
        Raises UserError when there is nothing to export from."""
        from db.exports import latest_scorer_version

        params = self
        if params.scorer_version is None:
            latest = latest_scorer_version(session)
            if not latest:
                raise UserError("the store has no scores yet; run `geocurate score` first")
            params = params.with_scorer_version(latest)
        rule = stored_rule(session, params.scorer_version)
        if params.threshold is None:
            if rule is None:
                raise UserError(f"scorer version {params.scorer_version} has no recorded threshold: pass --threshold")
            params = replace(params, threshold=rule.threshold)
        if params.review_band is None and rule is not None:
            params = replace(params, review_band=rule.band)
        return params

    @property
    def excluded_band(self) -> tuple[float, float] | None:
        """The band whose images waiting for review are left out: the `exclude` policy's, else none."""
        return self.review_band if self.pending == "exclude" else None

    def hashed(self) -> dict[str, Any]:
        """The parameters that shape the files: recorded in the manifest and part of its content hash (the review
        band and pending policy decide which waiting images go in)."""
        return dict(threshold=self.threshold, scorer_version=self.scorer_version, split=list(self.split),
                    seed=self.seed, dedup_similarity=self.dedup_similarity, h3_resolution=self.h3_resolution,
                    embedding_version=self.embedding_version, pending=self.pending,
                    review_band=list(self.review_band) if self.review_band is not None else None)
