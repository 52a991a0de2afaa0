"""Scoring throughput of 1 vs 2 `geocurate worker` processes on the same benchmark images, both measured in this run
(Redis broker, PostgreSQL store, tiny random-weight models). Each configuration gets a fresh database with the same
ingested images; the clock runs from submitting the score step to the run being done, after the workers have
started and loaded their models, so it measures the batch pipeline (claims, scoring, commits, hand-over).

    .venv/bin/python bench/worker_scaling.py [--images 48] [--batch-size 4] [--threads-per-worker 1]

With --threads-per-worker 1 each worker uses one core, so the ratio shows how the pipeline scales with processes on
a machine with at least two free cores; on a busy machine the ratio is lower, by the share of CPU the others take.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.db_ingest import drop, fresh_database  # noqa: E402
from db.engine import session_scope  # noqa: E402

REDIS = os.environ.get("GEOCURATE_BENCH_REDIS", "redis://127.0.0.1:6379/13")
MODEL_SETTINGS = {"GEOCURATE_DEMO_MODELS": "1", "GEOCURATE_SEGMENTER": "maskformer",
                  "GEOCURATE_SCORE_DTYPE": "float32", "GEOCURATE_DEVICE": "cpu"}


def drop_redis_keys(prefix: str) -> None:
    """The broker keys of one measurement (queues, unacked sets) under its private prefix."""
    import redis

    client = redis.Redis.from_url(REDIS)
    stale = list(client.scan_iter(match=f"{prefix}*"))
    if stale:
        client.delete(*stale)


def measure(workers_count: int, images_dir: Path, base: Path, args: argparse.Namespace) -> tuple[int, float]:
    """(images scored, seconds) for one configuration, on its own database and queue prefix."""
    from curation.ingest import ingest_folder
    from geocurate.settings import reload_settings
    from tests.local_workers import MODELS_MARK, READY_MARK, LocalWorkers, wait_for_run
    from workers.pipeline import start_run

    url = fresh_database()
    prefix = f"gc-bench-{uuid.uuid4().hex[:8]}-"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    env.update(MODEL_SETTINGS, GEOCURATE_DATABASE_URL=url, GEOCURATE_BROKER_URL=REDIS, GEOCURATE_QUEUE_PREFIX=prefix,
               GEOCURATE_BATCH_SIZE=str(args.batch_size), GEOCURATE_DATA_DIR=str(base / "data"),
               OMP_NUM_THREADS=str(args.threads_per_worker), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.update({k: v for k, v in env.items() if k.startswith("GEOCURATE_")})
    settings = reload_settings()
    workers = LocalWorkers(env, base / f"logs-{workers_count}")
    try:
        with session_scope(url) as session:
            ingest_folder(session, images_dir)
        names = [f"bench{workers_count}-{i}" for i in range(workers_count)]
        for name in names:
            workers.start(name, queues="score")
        workers.wait_for(names, READY_MARK, timeout=300)
        workers.wait_for(names, MODELS_MARK, timeout=300)
        start = time.perf_counter()
        run_id = start_run(["score"], {}, "pipeline", settings)
        state = wait_for_run(run_id, timeout=3600, settings=settings, poll=0.05)
        elapsed = time.perf_counter() - start
        if state["status"] != "done":
            raise RuntimeError(f"run ended {state['status']}: {state}")
        return int(state["summary"]["score"]["totals"].get("scored", 0)), elapsed
    finally:
        workers.stop_all()
        drop_redis_keys(prefix)
        drop(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48, help="sample street scenes (320-640 px wide)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    args = parser.parse_args()

    from geocurate.cli.sample_data import generate_sample

    with tempfile.TemporaryDirectory(prefix="geocurate-bench-workers-") as tmp:
        base = Path(tmp)
        sample = generate_sample(base / "sample", n_images=args.images + 1, n_clues=4, seed=0)
        results = {}
        for count in (1, 2):
            scored, seconds = measure(count, sample.images_dir, base, args)
            results[count] = scored / seconds
            print(f"{count} worker process{'es' if count > 1 else ''}: {scored} images scored in {seconds:.1f}s "
                  f"= {results[count]:.2f} images/s (batch {args.batch_size}, {args.threads_per_worker} torch "
                  f"thread(s) each, {os.cpu_count()} cores)")
        print(f"ratio 2 workers / 1 worker: {results[2] / results[1]:.2f}x")


if __name__ == "__main__":
    main()
