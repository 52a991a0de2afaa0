"""How long a SIGKILLed worker's batch stays lost, with the default lease, heartbeat and reconcile interval: two real
`geocurate worker` processes and one `geocurate beat` (Redis broker, PostgreSQL store, tiny random-weight models)
run a pipeline over the sample images; when a worker holds a score batch, its whole process group is SIGKILLed (a
lost machine; what the OOM killer does to the pool process is covered by the worker tests) and the clock runs until
the other worker has done that batch.

    .venv/bin/python bench/worker_recovery.py [--images 78]

The figure is bounded by the lease still left at the kill (at most GEOCURATE_LEASE_SECONDS, at least that minus one
heartbeat), then the wait for the next reconcile tick (up to GEOCURATE_RECONCILE_INTERVAL), then the batch itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.db_ingest import drop, fresh_database  # noqa: E402
from bench.worker_scaling import MODEL_SETTINGS, REDIS, drop_redis_keys  # noqa: E402
from db.engine import session_scope  # noqa: E402

POLL = 0.05


def batch_state(url: str, batch_id: int) -> tuple[str, str | None, datetime | None]:
    from db.models import Batch

    with session_scope(url) as session:
        batch = session.get(Batch, batch_id)
        return batch.status, batch.claimed_by, batch.lease_until


def first_claimed_score_batch(url: str, run_id: int, timeout: float = 600) -> int:
    from sqlalchemy import select

    from db.models import Batch

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(url) as session:
            batch_id = session.scalar(select(Batch.id).where(
                Batch.run_id == run_id, Batch.step == "score", Batch.status == "claimed"))
        if batch_id is not None:
            return batch_id
        time.sleep(0.02)
    raise RuntimeError("the score step never started")


def follow(url: str, batch_id: int, victim_holder: str, killed_at: float, timeout: float = 900) -> dict[str, float]:
    """Seconds from the kill to: the batch leaving the dead worker (re-queued or claimed anew), and being done."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while "done" not in seen:
        status, holder, _ = batch_state(url, batch_id)
        if "released" not in seen and (status == "queued" or holder != victim_holder):
            seen["released"] = time.monotonic() - killed_at
        if status == "done":
            seen["done"] = time.monotonic() - killed_at
        if status == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} ended {status} / not done after {timeout:.0f}s")
        time.sleep(POLL)
    return seen


def scores_per_image(url: str) -> list[int]:
    from sqlalchemy import func, select

    from db.models import Score

    with session_scope(url) as session:
        return [n for _, n in session.execute(select(Score.image_id, func.count()).group_by(Score.image_id))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=78, help="sample street scenes (320-640 px wide)")
    args = parser.parse_args()

    from geocurate.cli.sample_data import generate_sample
    from geocurate.settings import reload_settings
    from tests.local_workers import MODELS_MARK, READY_MARK, LocalWorkers, wait_for_run
    from workers.pipeline import run_pipeline

    url = fresh_database()
    prefix = f"gc-bench-recovery-{uuid.uuid4().hex[:8]}-"
    with tempfile.TemporaryDirectory(prefix="geocurate-bench-recovery-") as tmp:
        base = Path(tmp)
        sample = generate_sample(base / "sample", n_images=args.images, n_clues=4, seed=0)
        env = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
        env.update(MODEL_SETTINGS, GEOCURATE_DATABASE_URL=url, GEOCURATE_BROKER_URL=REDIS,
                   GEOCURATE_QUEUE_PREFIX=prefix, GEOCURATE_DATA_DIR=str(base / "data"), OMP_NUM_THREADS="1",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        os.environ.update({k: v for k, v in env.items() if k.startswith("GEOCURATE_")})
        settings = reload_settings()
        workers = LocalWorkers(env, base / "logs")
        try:
            workers.start("w1")
            workers.start("w2")
            workers.start_beat()
            workers.wait_for(["w1", "w2"], READY_MARK, timeout=300)
            workers.wait_for(["w1", "w2"], MODELS_MARK, timeout=300)
            submitted = time.monotonic()
            run_id = run_pipeline(sample.images_dir, sample.metadata_csv, settings=settings)
            batch_id = first_claimed_score_batch(url, run_id)
            _, holder, _ = batch_state(url, batch_id)
            victim = workers.owner(int(holder.rsplit(":", 1)[1]))
            workers.kill(victim)
            killed_at = time.monotonic()
            seen = follow(url, batch_id, holder, killed_at)
            state = wait_for_run(run_id, timeout=900, settings=settings)
            finished = time.monotonic() - submitted
            _, redone_by, _ = batch_state(url, batch_id)
            survivor = workers.owner(int(redone_by.rsplit(":", 1)[1]))
        finally:
            workers.stop_all()
            drop_redis_keys(prefix)
    per_image = scores_per_image(url)
    drop(url)

    print(f"lease {settings.lease_seconds} s, heartbeat {settings.heartbeat_seconds:g} s, reconcile every "
          f"{settings.reconcile_interval} s, batches of {settings.batch_size} images, {args.images} images, "
          f"{os.cpu_count()} cores")
    print(f"SIGKILL of {victim} -> batch {batch_id} taken from it: {seen['released']:.1f} s")
    print(f"SIGKILL -> batch done by the other worker ({survivor}): {seen['done']:.1f} s")
    print(f"run {state['status']} {finished:.1f} s after it was submitted; {len(per_image)} images scored, "
          f"{sum(n > 1 for n in per_image)} of them more than once")


if __name__ == "__main__":
    main()
