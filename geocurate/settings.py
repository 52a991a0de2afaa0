"""Typed settings: the one place every knob of geocurate lives.

Values come, in order of precedence, from keyword arguments, `GEOCURATE_*` environment variables, an optional
`geocurate.toml` (path in `GEOCURATE_CONFIG`, default `./geocurate.toml`) and the defaults below. The README's
configuration table is generated from this class (`geocurate config docs`) and a test keeps the two in sync, so a
field's description is its user documentation.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

ENV_PREFIX = "GEOCURATE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # --- store ---------------------------------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./geocurate.db",
        description="SQLAlchemy URL of the store. PostgreSQL in production: `postgresql+psycopg://user:pw@host/db`.",
    )
    data_dir: Path = Field(Path("./geocurate-data"), description="Where caches, reports and demo files are written.")

    # --- scoring ---------------------------------------------------------------------------------------------------
    segmenter: Literal["sam", "maskformer"] = Field(
        "sam", description="Where class ratios come from: SAM masks named by open_clip, or an ADE20K segmentation model."
    )
    demo_models: bool = Field(
        False, description="Use tiny random-weight models built from configs (demo and tests; scores are not meaningful)."
    )
    clip_model: str = Field("ViT-B-32", description="open_clip model name (or `local-dir:/path` of a saved model).")
    clip_pretrained: str | None = Field(
        "laion2b_s34b_b79k", description="open_clip pretrained tag, or a local checkpoint file; empty for random weights."
    )
    clip_prompt_template: str = Field(
        "a street-view photo of a {name}", description="Zero-shot prompt used to name each SAM mask with open_clip."
    )
    sam_model_type: str = Field("vit_b", description="segment-anything model type (vit_b, vit_l, vit_h).")
    sam_checkpoint: Path | None = Field(None, description="Path of the SAM checkpoint (e.g. sam_vit_b_01ec64.pth).")
    sam_points_per_side: int = Field(16, description="SAM automatic mask generator grid; cost grows with its square.")
    sam_crop_n_layers: int = Field(0, description="SAM crop layers; each layer re-runs the encoder on crops (slow).")
    sam_pred_iou_thresh: float = Field(0.88, description="SAM predicted-IoU filter for masks.")
    sam_stability_score_thresh: float = Field(0.95, description="SAM stability-score filter for masks.")
    sam_min_mask_region_area: int = Field(0, description="SAM post-processing: remove small holes/islands (pixels).")
    maskformer_model: str = Field(
        "facebook/maskformer-swin-base-ade",
        description="transformers ADE20K semantic-segmentation model id or local path (segmenter=maskformer).",
    )
    score_batch_size: int = Field(8, description="Images per scoring batch (one store transaction, one CLIP pass).")
    clip_batch_size: int = Field(128, description="Mask crops per open_clip forward pass.")
    score_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Model dtype; auto = bf16 on GPUs and on CPUs with native bf16 (avx512_bf16/AMX), else fp32."
    )
    device: str = Field("auto", description="torch device for models: auto, cpu, cuda, cuda:1 ...")
    class_weights_path: Path | None = Field(
        None, description="JSON list of 150 class weights replacing the paper's reference weights."
    )
    threshold: float = Field(0.4, description="Locatability at or above which an image is kept (paper: 0.4).")
    review_band_low: float = Field(0.3, description="Scores in [low, high) are sent to human review.")
    review_band_high: float = Field(0.5, description="Upper bound (exclusive) of the review band.")
    min_image_side: int = Field(32, description="Images whose shorter side is below this many pixels are quarantined.")
    max_image_pixels: int = Field(
        100_000_000, gt=0,
        description="Images with more pixels (width × height, read from the header) are quarantined at ingest as"
        " `too_large`, before they are decoded.",
    )
    score_max_side: int = Field(
        1024, ge=64,
        description="Working size: images are scaled down so their longer side is at most this many pixels before"
        " segmentation (SAM sees 1024 px anyway), so memory per image is bounded whatever the file's size.",
    )
    allow_outside_root: bool = Field(
        False, description="Ingest symlinks that point outside the ingested folder (else quarantined as `outside_root`)."
    )

    # --- clues -----------------------------------------------------------------------------------------------------
    spacy_model: str | None = Field(
        None, description="Installed spaCy pipeline whose GPE/LOC/NORP entities are merged with the gazetteer."
    )
    pairing_top_k: int = Field(3, description="Images paired with a clue that has none (same country, most similar).")
    pairing_min_similarity: float = Field(0.0, description="Minimum clue-text/image cosine similarity for a pair.")

    # --- workers ---------------------------------------------------------------------------------------------------
    broker_url: str | None = Field(
        None, description="Celery broker (redis://127.0.0.1:6379/0 or amqp://...); unset = embedded, in-process tasks."
    )
    result_backend: str | None = Field(None, description="Celery result backend; defaults to the broker when Redis.")
    batch_size: int = Field(32, description="Images per pipeline batch (one task message).")
    lease_seconds: int = Field(
        60, gt=0, description="How long a worker's claim on a batch lasts without a heartbeat before reconcile re-queues it."
    )
    heartbeat_seconds: float = Field(
        15, gt=0, description="How often a working worker renews its claim's lease (must be well below the lease)."
    )
    visibility_timeout: int = Field(
        3600, description="Redis visibility timeout (s); must exceed the longest batch and every ETA."
    )
    reconcile_interval: int = Field(30, description="Seconds between periodic reconcile and annotation-sync runs.")
    worker_max_tasks_per_child: int = Field(100, description="Recycle a worker child after this many tasks.")
    task_max_retries: int = Field(5, description="Retries for transient failures (database, Label Studio 5xx or 429).")
    retry_backoff_max: int = Field(300, description="Largest retry delay in seconds (exponential backoff with jitter).")
    queue_prefix: str = Field(
        "", description="Prefix of every queue name, so several deployments (or test runs) can share one broker."
    )

    # --- labeling --------------------------------------------------------------------------------------------------
    label_studio_url: str | None = Field(
        None, description="Label Studio base URL; unset = borderline items go to the local review queue."
    )
    label_studio_api_key: SecretStr | None = Field(None, description="Label Studio API token (never logged).")
    label_studio_image_root: Path | None = Field(
        None, description="Image directory served by Label Studio local-files storage (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)."
    )
    label_studio_image_url_prefix: str | None = Field(
        None, description="URL prefix for images on object storage/HTTP; used instead of local files when set."
    )
    review_project_prefix: str = Field(
        "geocurate", min_length=1, max_length=100,
        description="Start of the Label Studio project titles (\"<prefix>: locatability review\"). Projects are found"
        " by title: stores that share one Label Studio need different prefixes.",
    )
    review_overlap: int = Field(1, description="Annotators per review task.")
    webhook_secret: SecretStr | None = Field(None, description="Shared secret Label Studio sends to the webhook receiver.")
    webhook_host: str = Field("127.0.0.1", description="Bind address of the webhook receiver.")
    webhook_port: int = Field(8765, description="Port of the webhook receiver.")
    webhook_max_body_bytes: int = Field(
        1_000_000, gt=0, description="Largest webhook request body accepted; larger ones get 413 without being read."
    )
    webhook_url: str | None = Field(
        None,
        description="URL at which Label Studio reaches the webhook receiver (e.g. http://geocurate-webhook:8765/webhook);"
        " with the secret set, push registers it on each review project.",
    )

    # --- exports ---------------------------------------------------------------------------------------------------
    export_dir: Path = Field(Path("./exports"), description="Where export folders are written.")
    dedup_similarity: float = Field(0.95, description="Image-embedding cosine similarity above which two are duplicates.")
    h3_resolution: int = Field(5, description="H3 resolution grouping images without a city for geo-aware splits.")
    export_images: Literal["link", "copy"] = Field("link", description="Put images in exports as symlinks or copies.")

    # --- training --------------------------------------------------------------------------------------------------
    vlm_model: str = Field(
        "Qwen/Qwen2-VL-2B-Instruct", description="Vision-language base model: HF model id or local path."
    )
    adapters_dir: Path = Field(
        Path("./adapters"), description="Where LoRA adapters and checkpoints are written: one folder per export."
    )
    training_config: Path | None = Field(
        None,
        description="JSON file overriding LoRA/training hyper-parameters (keys of training/config.py TrainingConfig).",
    )
    train_preset: Literal["default", "small"] = Field(
        "default",
        description="Training hyper-parameter preset: `small` for exports of a few dozen to a few hundred examples "
        "(README, Training); the training_config file overrides it.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get(f"{ENV_PREFIX}CONFIG", "geocurate.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def embedded(self) -> bool:
        """No broker configured: tasks run in-process (eager) through the same code."""
        return not self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the CLI's --config change the environment)."""
    get_settings.cache_clear()
    return get_settings()
