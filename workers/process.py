"""What one worker process holds: its identity, its models and the batch it is working on, which a SIGTERM gives
back to the store instead of leaving it claimed until its lease runs out.

Models load in a thread started at process init, not in the init itself: Celery kills a pool process that has not
reported for duty within `worker_proc_alive_timeout` (4 s), and a real model takes longer than that to load, so an
init that loads them makes every replacement process (after `max_tasks_per_child` tasks, or an OOM kill) die for ever.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from geocurate.settings import Settings

log = logging.getLogger(__name__)

CONSUMED_QUEUES: set[str] = set()  # filled in the worker's main process, inherited by forked children
MODEL_QUEUES = ("score",)  # queues whose tasks need the scoring models
_SCORERS: dict[str, Any] = {}
_CURRENT_BATCH: int | None = None
_MODELS_LOADING: threading.Thread | None = None
_IN_POOL = False  # set in a Celery pool process; the embedded mode runs tasks in the CLI's process (and threads)
_STOPPING = False


class ShutdownRequested(SystemExit):
    """SIGTERM arrived while a batch was running: unwind, release the batch, exit."""


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
        log.info("scoring models loaded in process %s", os.getpid())
    return _SCORERS[key]


def serves_models(settings: Settings) -> bool:
    wanted = {f"{settings.queue_prefix}{q}" for q in MODEL_QUEUES}
    return bool(CONSUMED_QUEUES & wanted)


def init_worker_process(settings: Settings) -> None:
    """worker_process_init: fresh database connections after the fork, and the models (in the background, so this
    returns at once)."""
    global _IN_POOL
    from db.engine import dispose_all

    dispose_all()
    _IN_POOL = True
    if serves_models(settings):
        _load_models_in_background(settings)


def _load_models_in_background(settings: Settings) -> None:
    global _MODELS_LOADING

    def load() -> None:
        try:
            get_scorer(settings)
        except Exception as exc:  # noqa: BLE001 - the first score task loads again and reports the error
            log.error("loading the scoring models failed: %s", exc)

    _MODELS_LOADING = threading.Thread(target=load, name="load-models", daemon=True)
    _MODELS_LOADING.start()


def before_task() -> None:
    """task_prerun, in a pool process. The SIGTERM hand-back is installed here because billiard installs its own
    handler after worker_process_init. And no task runs beside the loading thread, so the two never import torch
    and transformers at once (concurrent first imports can see half-initialised modules)."""
    if not _IN_POOL:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    if _MODELS_LOADING is not None:
        _MODELS_LOADING.join()


def _on_sigterm(signum: int, frame: Any) -> None:
    """In a batch: unwind it (the task gives it back, then leaves). Otherwise: die at once."""
    global _STOPPING

    signal.signal(signum, signal.SIG_IGN)  # a second TERM (from the group and the main process) must not cut it short
    if _CURRENT_BATCH is None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _STOPPING = True
    raise ShutdownRequested(128 + signum)


def stopping() -> bool:
    """A SIGTERM is unwinding this process's batch: whatever exception arrives now is that, not the batch's."""
    return _STOPPING


def leave() -> None:
    """Exit as a killed process does, so that Celery reports the task lost and puts its message back
    (task_reject_on_worker_lost), rather than seeing it fail and acking it."""
    os._exit(128 + signal.SIGTERM)


def hand_back_on_shutdown() -> None:
    """The main process's warm shutdown: `docker stop` signals only it, and waiting for the running batch could
    outlast any grace period (a training stage takes hours), after which the KILL would leave the batch claimed until
    its lease ran out. Passing the TERM on to the pool processes makes each give its batch back at once."""
    from billiard.process import active_children

    pids = [child.pid for child in active_children()]
    log.info("shutting down: SIGTERM to pool processes %s, so that a running batch is given back", pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@contextmanager
def working_on(batch_id: int) -> Iterator[None]:
    global _CURRENT_BATCH
    _CURRENT_BATCH = batch_id
    try:
        yield
    finally:
        _CURRENT_BATCH = None
