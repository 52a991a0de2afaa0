"""Real `geocurate worker` and `geocurate beat` processes (Celery, prefork) against this machine's Redis and
PostgreSQL, scoring tiny generated images with the tiny random-weight models: two workers sharing a run, a worker
SIGKILLed mid-batch, pool processes recycled after every task or killed alone, SIGTERM as systemd and docker send
it, the same message delivered twice, a corrupt image inside a batch.

Each test session uses its own Redis database number and a unique key/queue prefix, so nothing else using Redis is
touched. Under CI an unreachable Redis or PostgreSQL fails these tests; locally they skip with the reason."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from db.engine import session_scope
from db.models import Batch, Image, Quarantine, Score, TaskFailure
from geocurate.settings import reload_settings
from tests.conftest import create_pg_database, drop_pg_database, unavailable
from tests.local_workers import MODELS_MARK, READY_MARK, ROOT, LocalWorkers, wait_for_run

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

REDIS_SERVER = os.environ.get("GEOCURATE_TEST_REDIS", "redis://127.0.0.1:6379/11")
WORKER_START_TIMEOUT = 120
RUN_TIMEOUT = 300
# Fast scoring: the tiny ADE20K segmentation model, fp32, one torch thread per worker process (2 cores here).
WORKER_SETTINGS = {
    "GEOCURATE_DEMO_MODELS": "1",
    "GEOCURATE_SEGMENTER": "maskformer",
    "GEOCURATE_SCORE_DTYPE": "float32",
    "GEOCURATE_DEVICE": "cpu",
    "GEOCURATE_BATCH_SIZE": "10",
    "GEOCURATE_RETRY_BACKOFF_MAX": "2",
}


def write_images(directory: Path, count: int, seed: int) -> list[Path]:
    """Small noisy images, distinct by content (so distinct sha256), the same bytes for the same seed."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        path = directory / f"img_{seed}_{index:04d}.png"
        PILImage.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)


class Workers(LocalWorkers):
    def wait_ready(self, *names: str) -> None:
        try:
            self.wait_for(names, READY_MARK, WORKER_START_TIMEOUT)
        except RuntimeError as exc:
            pytest.fail(str(exc))


def require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_SERVER, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no Redis here"
        unavailable(f"Redis at {REDIS_SERVER}", str(exc).splitlines()[0])


def drop_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_SERVER)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL store and a private Redis prefix, as the environment every worker and the test share."""
    require_redis()
    from db.migrate import upgrade

    url = create_pg_database("geocurate_workers")
    upgrade(url)
    prefix = f"gc-test-{uuid.uuid4().hex[:8]}-"
    base = tmp_path_factory.mktemp("workers")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    env.update(WORKER_SETTINGS, GEOCURATE_DATABASE_URL=url, GEOCURATE_BROKER_URL=REDIS_SERVER,
               GEOCURATE_QUEUE_PREFIX=prefix, GEOCURATE_DATA_DIR=str(base / "data"),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env["GEOCURATE_TEST_BASE"] = str(base)
    try:
        yield env
    finally:
        drop_keys(prefix)
        drop_pg_database(url)


def share_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """This test process sees the same settings as the workers (the autouse fixture cleared GEOCURATE_*)."""
    for key, value in env.items():
        if key.startswith("GEOCURATE_"):
            monkeypatch.setenv(key, value)
    return reload_settings()


@pytest.fixture
def use_env(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    return share_settings(worker_env, monkeypatch)


def private_workers(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
                    **settings: str):
    """(queue prefix, settings, Workers) of one test: its own queue prefix, so the shared pair of workers never picks
    up its batches; `settings` are GEOCURATE_* overrides for its workers and for the test process."""
    prefix = f"gc-{name}-{uuid.uuid4().hex[:8]}-"
    env = {**worker_env, "GEOCURATE_QUEUE_PREFIX": prefix, **settings}
    (tmp_path / "logs").mkdir()
    return prefix, share_settings(env, monkeypatch), Workers(env, tmp_path / "logs")


@pytest.fixture(scope="module")
def two_workers(worker_env: dict[str, str]) -> Iterator[Workers]:
    log_dir = Path(worker_env["GEOCURATE_TEST_BASE"]) / "logs"
    log_dir.mkdir()
    workers = Workers(worker_env, log_dir)
    try:
        workers.start("w1")
        workers.start("w2")
        workers.wait_ready("w1", "w2")
        yield workers
    finally:
        workers.stop_all()


def first_claimed_score_batch(url: str, run_id: int) -> int:
    """Poll until a worker holds one of the run's score batches (so a signal lands mid-batch); its id."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        with session_scope(url) as session:
            batch_id = session.scalar(select(Batch.id).where(
                Batch.run_id == run_id, Batch.step == "score", Batch.status == "claimed"))
        if batch_id is not None:
            return batch_id
        assert time.monotonic() < deadline, "the score step never started"
        time.sleep(0.02)


def score_rows(url: str) -> list[tuple]:
    with session_scope(url) as session:
        return session.execute(
            select(Score.id, Score.image_id, Score.scorer_version, Score.locatability, Score.computed_at)
            .order_by(Score.id)
        ).all()


def score_step_total(state: dict, key: str) -> int:
    return int(state["summary"].get("score", {}).get("totals", {}).get(key, 0))


def test_two_workers_score_every_image_exactly_once(two_workers: Workers, use_env, tmp_path: Path) -> None:
    from workers.pipeline import run_pipeline

    paths = write_images(tmp_path / "images", 210, seed=1)
    corrupt(paths[17])
    run_id = run_pipeline(tmp_path / "images", settings=use_env)
    state = wait_for_run(run_id, RUN_TIMEOUT, use_env)
    assert state["status"] == "done", state

    url = use_env.database_url
    with session_scope(url) as session:
        counts = dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).tuples().all())
        per_image = session.execute(select(Score.image_id, func.count()).group_by(Score.image_id)).tuples().all()
        holders = set(session.scalars(select(Batch.claimed_by).where(Batch.run_id == run_id, Batch.step == "score")))
        bad = session.scalars(select(Quarantine.reference).where(Quarantine.item_kind == "image")).all()
    assert counts == {"scored": 209}, "every readable image stored once and scored"
    assert len(per_image) == 209 and all(n == 1 for _, n in per_image), "exactly one score row per image"
    assert score_step_total(state, "scored") == 209 and score_step_total(state, "skipped") == 0, (
        "no batch's work was committed twice"
    )
    assert bad == [str(paths[17].resolve())] or bad == [str(paths[17])]
    assert len({holder.rsplit(":", 1)[1] for holder in holders}) == 2, f"both workers took batches: {holders}"
    for name in two_workers.procs:
        assert two_workers.log(name).count(MODELS_MARK) == 1, "models load once per worker process, not per task"


def test_geocurate_run_follows_a_run_done_by_workers(two_workers: Workers, use_env, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from geocurate.cli import app
    from workers.pipeline import run_progress

    write_images(tmp_path / "images", 12, seed=6)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "queued on redis://" in result.output and ": done" in result.output
    run_id = int(result.output.split("run ", 1)[1].split(":", 1)[0])
    assert score_step_total(run_progress(run_id, use_env), "scored") == 12


def test_a_corrupt_image_inside_a_batch_is_quarantined_and_the_rest_scored(two_workers: Workers, use_env,
                                                                           tmp_path: Path) -> None:
    from curation.ingest import ingest_images
    from workers.pipeline import start_run

    paths = write_images(tmp_path / "images", 8, seed=2)
    url = use_env.database_url
    with session_scope(url) as session:
        assert ingest_images(session, paths).added == 8
    corrupt(paths[3])  # the file went bad between ingest and scoring (a disk or copy error)
    run_id = start_run(["score"], {}, "pipeline", use_env)
    state = wait_for_run(run_id, RUN_TIMEOUT, use_env)
    assert state["status"] == "done" and state["summary"]["score"]["batches"] == {"done": 1}, state
    assert score_step_total(state, "scored") == 7 and score_step_total(state, "quarantined") == 1
    with session_scope(url) as session:
        reason = session.scalar(select(Quarantine.reason).where(Quarantine.reference == str(paths[3].resolve())))
        status = session.scalar(select(Image.status).where(Image.uri == str(paths[3].resolve())))
        failures = session.scalar(select(func.count()).select_from(TaskFailure))
    assert reason == "unreadable_image" and status == "quarantined"
    assert failures == 0, "bad input is quarantined, never a task failure or a retry"


def test_the_same_message_delivered_twice_leaves_the_store_unchanged(two_workers: Workers, use_env,
                                                                     tmp_path: Path) -> None:
    from curation.ingest import ingest_images
    from workers.app import sender_for
    from workers.pipeline import create_run

    paths = write_images(tmp_path / "images", 10, seed=3)
    url = use_env.database_url
    with session_scope(url) as session:
        ingest_images(session, paths)
    run_id, (step, (batch_id,)) = create_run(["score"], {}, "pipeline", use_env)
    sender = sender_for(use_env)
    task_id = str(uuid.uuid4())
    skip_line = f"batch {batch_id}: already done or held by a live worker"

    def deliver() -> None:
        sender.send_task("workers.tasks.score_batch", args=(batch_id,), task_id=task_id)

    def wait_for_skips(count: int) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while sum(two_workers.log(name).count(skip_line) for name in two_workers.procs) < count:
            assert time.monotonic() < deadline, f"the duplicate delivery of batch {batch_id} was never processed"
            time.sleep(0.1)

    deliver()
    deliver()  # the same message twice, at once: one delivery claims the batch, the other finds it taken
    state = wait_for_run(run_id, RUN_TIMEOUT, use_env)
    wait_for_skips(1)
    assert state["status"] == "done" and score_step_total(state, "scored") == 10, state
    before = score_rows(url)
    with session_scope(url) as session:
        batch_before = session.execute(select(Batch.status, Batch.attempts, Batch.updated_at, Batch.result)
                                       .where(Batch.id == batch_id)).one()
    deliver()  # and once more after it is done
    wait_for_skips(2)
    assert score_rows(url) == before and len(before) >= 10
    with session_scope(url) as session:
        assert session.execute(select(Batch.status, Batch.attempts, Batch.updated_at, Batch.result)
                               .where(Batch.id == batch_id)).one() == batch_before
    assert batch_before.attempts == 1 and batch_before.status == "done"


# Reconcile the way a deployment does (a real `geocurate beat`), on a short clock so the test stays fast: a dead
# worker's batch is back after at most lease + interval. bench/worker_recovery.py measures the default clock.
FAST_RECOVERY = {"GEOCURATE_LEASE_SECONDS": "10", "GEOCURATE_HEARTBEAT_SECONDS": "2",
                 "GEOCURATE_RECONCILE_INTERVAL": "3"}
RECOVERY_BOUND = 180  # seconds from the SIGKILL to the run being done
SKIPPED = "already done or held by a live worker"


def claimed_pid(url: str, batch_id: int) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(Batch.claimed_by).where(Batch.id == batch_id)).rsplit(":", 1)[1])


def scores_per_image(url: str, folder: Path) -> list[int]:
    """Score rows per image of this test's folder (the store is shared by the module's tests)."""
    with session_scope(url) as session:
        return [n for _, n in session.execute(
            select(Score.image_id, func.count()).join(Image, Image.id == Score.image_id)
            .where(Image.uri.like(f"{folder}%")).group_by(Score.image_id)).tuples()]


def test_a_worker_killed_mid_batch_is_replaced_by_the_other_within_minutes(worker_env: dict[str, str],
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    """kill -9 of one worker's whole process group while it holds a batch, beside a second worker and beat: its
    claim stops being renewed, reconcile re-queues it when the lease runs out and the other worker does it, once."""
    prefix, settings, workers = private_workers(worker_env, monkeypatch, tmp_path, "kill", GEOCURATE_BATCH_SIZE="6",
                                                **FAST_RECOVERY)
    from workers.pipeline import run_pipeline

    url = settings.database_url
    try:
        workers.start("w1")
        workers.start("w2")
        workers.start_beat()
        workers.wait_ready("w1", "w2")
        write_images(tmp_path / "images", 60, seed=4)
        run_id = run_pipeline(tmp_path / "images", settings=settings)
        killed_batch = first_claimed_score_batch(url, run_id)
        victim_pid = claimed_pid(url, killed_batch)
        victim = workers.owner(victim_pid)
        workers.kill(victim)
        killed_at = time.monotonic()
        with session_scope(url) as session:
            assert session.scalar(select(Batch.status).where(Batch.id == killed_batch)) == "claimed", (
                "killed while the batch was in progress")
        state = wait_for_run(run_id, RECOVERY_BOUND, settings)
        recovered_in = time.monotonic() - killed_at
        survivor = next(name for name in ("w1", "w2") if name != victim)
        redone_by = workers.owner(claimed_pid(url, killed_batch))
        survivor_log = workers.log(survivor)
    finally:
        workers.stop_all()
        drop_keys(prefix)

    assert state["status"] == "done", state
    assert recovered_in < RECOVERY_BOUND
    per_image = scores_per_image(url, tmp_path)
    assert len(per_image) == 60 and set(per_image) == {1}, "every image scored, none twice"
    assert score_step_total(state, "scored") == 60, "the killed batch's half-done work was never committed"
    with session_scope(url) as session:
        redone = session.get(Batch, killed_batch)
    assert redone.status == "done" and redone.attempts == 2 and redone_by == survivor
    assert SKIPPED not in survivor_log, (
        "no batch was re-sent while it waited behind the backlog (reconcile ran every 3 s with a 10 s lease)")


def test_pool_processes_replaced_after_every_task_or_killed_work_again(worker_env: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """The models take longer to load (about 5 s here) than Celery waits for a new pool process to report (4 s), so
    they load beside the process's start, not in it. With one task per process, every task of a whole run runs in a
    fresh process; one scoring process is SIGKILLed mid-batch (what the OOM killer does), and its replacement takes
    the dead process's batch over at once, without lease expiry or reconcile (no beat here, default 60 s lease).
    Only the scoring worker loads models, so its three fresh processes are the ones that prove it."""
    prefix, settings, workers = private_workers(worker_env, monkeypatch, tmp_path, "recycle", GEOCURATE_BATCH_SIZE="6",
                                                GEOCURATE_WORKER_MAX_TASKS_PER_CHILD="1")
    from workers.pipeline import run_pipeline

    url = settings.database_url
    try:
        workers.start("io", queues="ingest,review,export")
        workers.start("scoring", queues="score")
        workers.wait_ready("io", "scoring")
        write_images(tmp_path / "images", 12, seed=7)
        run_id = run_pipeline(tmp_path / "images", settings=settings)
        killed_batch = first_claimed_score_batch(url, run_id)
        child = claimed_pid(url, killed_batch)
        assert workers.owner(child) == "scoring" and child != workers.procs["scoring"].pid, "a pool process"
        os.kill(child, signal.SIGKILL)
        state = wait_for_run(run_id, RUN_TIMEOUT, settings)
        logs = {name: workers.log(name) for name in ("io", "scoring")}
    finally:
        workers.stop_all()
        drop_keys(prefix)

    assert state["status"] == "done", state
    assert not any("Timed out waiting for UP message" in log for log in logs.values()), "no process killed at start"
    per_image = scores_per_image(url, tmp_path)
    assert len(per_image) == 12 and set(per_image) == {1}, "every image scored, none twice"
    with session_scope(url) as session:
        score_batches = session.scalar(select(func.count()).select_from(Batch)
                                       .where(Batch.run_id == run_id, Batch.step == "score"))
        redone = session.get(Batch, killed_batch)
    assert redone.status == "done" and redone.attempts == 2
    loaded_in = set(re.findall(rf"{MODELS_MARK} in process (\d+)", logs["scoring"]))
    # two batches of images and the converge batch (the run's scorer version, scores carried over to it)
    assert len(loaded_in) > score_batches == 3, "a fresh process with its models for every task and the killed one"
    io_tasks = re.findall(r"/(ForkPoolWorker-\d+)\] Task workers\.tasks\.\w+\[[-0-9a-f]+\] succeeded", logs["io"])
    assert len(io_tasks) >= 3 and len(set(io_tasks)) == len(io_tasks), "the I/O worker's too: one process per task"


@pytest.mark.parametrize("whole_group", [True, False], ids=["systemd-group", "docker-stop-main-process"])
def test_sigterm_gives_the_running_batch_back_and_the_next_worker_does_it(worker_env: dict[str, str],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, whole_group: bool) -> None:
    """SIGTERM to the whole worker (systemd), or only to its main process (`docker stop`: the container's first
    process, which passes it on to its pool processes): the batch in progress is given back in the store at once,
    not finished and not left claimed until the KILL, and its message goes back to the broker, so the next worker
    does it without waiting for a lease or for reconcile."""
    prefix, settings, workers = private_workers(worker_env, monkeypatch, tmp_path, "term", GEOCURATE_BATCH_SIZE="30")
    from workers.pipeline import run_pipeline

    url = settings.database_url
    try:
        workers.start("first")
        workers.wait_ready("first")
        write_images(tmp_path / "images", 30, seed=5 if whole_group else 8)  # new images each: scored here
        run_id = run_pipeline(tmp_path / "images", settings=settings)
        in_progress = first_claimed_score_batch(url, run_id)
        workers.terminate("first", whole_group=whole_group)
        with session_scope(url) as session:
            status = session.scalar(select(Batch.status).where(Batch.id == in_progress))
        assert status == "queued", f"the batch was left {status}: given back at once, never held"
        workers.start("second")
        workers.wait_ready("second")
        state = wait_for_run(run_id, RUN_TIMEOUT, settings)  # no reconcile, no lease expiry needed
    finally:
        workers.stop_all()
        drop_keys(prefix)
    assert state["status"] == "done" and score_step_total(state, "scored") == 30, state


RABBITMQ_SERVER = os.environ.get("GEOCURATE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_reconcile_resends_only_when_the_queue_is_empty(broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued batch behind a backlog is not lost; one whose queue is empty is. Checked on both brokers, with the
    queue prefix (on Redis it prefixes every key, which kombu's passive declare does not see)."""
    from workers.app import sender_for
    from workers.pipeline import _queue_is_empty

    url = REDIS_SERVER if broker == "redis" else RABBITMQ_SERVER
    if broker == "redis":
        require_redis()
    prefix = f"gc-depth-{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("GEOCURATE_BROKER_URL", url)
    monkeypatch.setenv("GEOCURATE_QUEUE_PREFIX", prefix)
    settings = reload_settings()
    sender = sender_for(settings)
    try:
        with sender.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any failure means "no broker here"
        unavailable(f"{broker} at {url}", str(exc).splitlines()[0])
    try:
        assert _queue_is_empty("score", settings)
        sender.send_task("workers.tasks.score_batch", args=(-1,))
        assert not _queue_is_empty("score", settings)
        assert _queue_is_empty("ingest", settings)
    finally:
        if broker == "redis":
            drop_keys(prefix)
        else:
            with sender.connection_for_write() as connection:
                for queue in ("score", "train", "ingest", "review", "export"):
                    try:
                        connection.default_channel.queue_delete(f"{prefix}{queue}")
                    except Exception:  # noqa: BLE001 - never declared
                        pass
