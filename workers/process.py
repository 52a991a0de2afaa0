"""What one worker process holds: its identity, its models (loaded once, at process start) and the batch it is
working on, which a SIGTERM gives back to the store instead of leaving it claimed until its lease runs out."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from geocurate.settings import Settings

log = logging.getLogger(__name__)

CONSUMED_QUEUES: set[str] = set()  # filled in the worker's main process, inherited by forked children
MODEL_QUEUES = ("score",)  # queues whose tasks need the scoring models
_SCORERS: dict[str, Any] = {}
_CURRENT_BATCH: int | None = None


class ShutdownRequested(SystemExit):
    """SIGTERM arrived while a batch was running: unwind, release the batch, exit."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local(holder: str | None) -> bool:
    """True when `holder` names a process on this host that no longer exists (its claim can be taken at once)."""
    if not holder or ":" not in holder:
        return False
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def scoring_fields(settings: Settings) -> str:
    return settings.model_dump_json(include={
        "segmenter", "demo_models", "clip_model", "clip_pretrained", "clip_prompt_template", "sam_model_type",
        "sam_checkpoint", "sam_points_per_side", "sam_crop_n_layers", "sam_pred_iou_thresh",
        "sam_stability_score_thresh", "sam_min_mask_region_area", "maskformer_model", "score_batch_size",
        "clip_batch_size", "score_dtype", "device", "class_weights_path", "threshold", "review_band_low",
        "review_band_high", "min_image_side",
    })


def get_scorer(settings: Settings) -> Any:
    """The process-wide scorer for these settings: built once, then reused by every task of this process."""
    key = scoring_fields(settings)
    if key not in _SCORERS:
        from curation.scoring import Scorer

        _SCORERS.clear()
        _SCORERS[key] = Scorer.from_settings(settings)
    return _SCORERS[key]


def serves_models(settings: Settings) -> bool:
    wanted = {f"{settings.queue_prefix}{q}" for q in MODEL_QUEUES}
    return bool(CONSUMED_QUEUES & wanted)


def init_worker_process(settings: Settings) -> None:
    """worker_process_init: fresh database connections after the fork, the SIGTERM hand-back, and the models."""
    from db.engine import dispose_all

    dispose_all()
    signal.signal(signal.SIGTERM, _on_sigterm)
    if serves_models(settings):
        get_scorer(settings)
        log.info("scoring models loaded in process %s", os.getpid())


def _on_sigterm(signum: int, frame: Any) -> None:
    if _CURRENT_BATCH is not None:
        raise ShutdownRequested(128 + signum)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def working_on(batch_id: int) -> Iterator[None]:
    global _CURRENT_BATCH
    _CURRENT_BATCH = batch_id
    try:
        yield
    finally:
        _CURRENT_BATCH = None
