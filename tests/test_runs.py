"""`geocurate run` tells the truth: a run with a failed batch is `partial` and exits 1 naming the step and the items;
Ctrl-C (or SIGTERM, or a SIGKILL) on an embedded run leaves no batch claimed and the same command resumes the same
run; an unreachable broker is one line. Real `geocurate` processes, real stores, a real worker on Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from db.engine import session_scope
from db.models import Batch, Image, Run, Score
from tests.scoring_images import write_images
from tests.test_workers_celery import private_workers, worker_env  # noqa: F401 - fixture
from tests.local_workers import ROOT

IMAGES = 12
RUN_TIMEOUT = 300
FAST_SCORING = {  # the tiny ADE20K segmentation model, one thread: a few images per second
    "GEOCURATE_DEMO_MODELS": "1", "GEOCURATE_SEGMENTER": "maskformer", "GEOCURATE_SCORE_DTYPE": "float32",
    "GEOCURATE_DEVICE": "cpu", "GEOCURATE_BATCH_SIZE": "2", "OMP_NUM_THREADS": "1",
}


def geocurate(*args: str, env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geocurate.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def start_geocurate(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "geocurate.cli", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture
def embedded(tmp_path: Path) -> tuple[dict[str, str], Path, str]:
    """(environment, working directory, store URL) of an embedded SQLite deployment with a folder of images."""
    write_images(tmp_path / "images", IMAGES)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    env.update(FAST_SCORING, GEOCURATE_DATABASE_URL=url, GEOCURATE_DATA_DIR=str(tmp_path / "data"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    assert geocurate("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    return env, tmp_path, url


def fail_scores_of(url: str, image_name: str) -> None:
    """Make the store refuse the score of one image (a stand-in for any failure of one batch)."""
    with session_scope(url) as session:
        if url.startswith("postgresql"):
            session.execute(text(
                "CREATE FUNCTION refuse_score() RETURNS trigger AS $$ BEGIN IF NEW.image_id = (SELECT id FROM images "
                f"WHERE uri LIKE '%/{image_name}') THEN RAISE EXCEPTION 'refused on purpose'; END IF; RETURN NEW; END "
                "$$ LANGUAGE plpgsql"))
            session.execute(text("CREATE TRIGGER refuse_score BEFORE INSERT ON scores FOR EACH ROW "
                                 "EXECUTE FUNCTION refuse_score()"))
        else:
            session.execute(text(
                "CREATE TRIGGER refuse_score BEFORE INSERT ON scores WHEN NEW.image_id = (SELECT id FROM images "
                f"WHERE uri LIKE '%/{image_name}') BEGIN SELECT RAISE(ABORT, 'refused on purpose'); END"))


def allow_scores(url: str) -> None:
    with session_scope(url) as session:
        session.execute(text("DROP TRIGGER refuse_score" + (" ON scores" if url.startswith("postgresql") else "")))


def scores_per_image(url: str) -> tuple[int, int, int]:
    """(images, score rows, distinct scored images)."""
    with session_scope(url) as session:
        return (session.scalar(select(func.count()).select_from(Image)),
                session.scalar(select(func.count()).select_from(Score)),
                session.scalar(select(func.count(func.distinct(Score.image_id)))))


def runs(url: str) -> list[tuple[int, str]]:
    with session_scope(url) as session:
        return session.execute(select(Run.id, Run.status).order_by(Run.id)).tuples().all()


def wait_for(condition, what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_failed_batch_makes_the_run_partial_and_exit_1(embedded):
    env, cwd, url = embedded
    assert geocurate("ingest", "images", "images", env=env, cwd=cwd).returncode == 0
    fail_scores_of(url, "street_005.png")
    failed = geocurate("run", "images", env=env, cwd=cwd)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "run 1 partial" in failed.stderr
    assert "failed: step score, batch 2" in failed.stderr and "refused on purpose" in failed.stderr
    assert "items: image 5, image 6" in failed.stderr
    assert runs(url) == [(1, "partial")]
    assert scores_per_image(url) == (IMAGES, IMAGES - 2, IMAGES - 2)  # the failed batch's two images wait
    status = geocurate("status", env=env, cwd=cwd)
    assert "partial" in status.stdout

    allow_scores(url)  # the cause fixed, the same command does exactly the missing work
    again = geocurate("run", "images", env=env, cwd=cwd)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "every item was processed or quarantined" in again.stdout
    assert scores_per_image(url) == (IMAGES, IMAGES, IMAGES)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill"])
def test_an_interrupted_run_resumes_with_the_same_command(embedded, stop):
    env, cwd, url = embedded
    running = start_geocurate("run", "images", env=env, cwd=cwd)

    def scoring_started() -> bool:
        with session_scope(url) as session:
            return bool(session.scalar(select(func.count()).select_from(Batch).where(
                Batch.step == "score", Batch.status == "done")))

    wait_for(scoring_started, "the first score batch")
    running.send_signal(stop)
    output, _ = running.communicate(timeout=60)
    if stop == signal.SIGKILL:
        assert running.returncode == -signal.SIGKILL
        assert runs(url) == [(1, "running")]  # nobody could say otherwise; the next run sees its runner is gone
    else:
        assert running.returncode == 130, output
        assert "interrupted at step score; run the same command again to resume it" in output
        assert runs(url) == [(1, "interrupted")]
        with session_scope(url) as session:
            assert not session.scalar(select(func.count()).select_from(Batch).where(Batch.status == "claimed"))
    images, rows, distinct = scores_per_image(url)
    assert 0 < rows < IMAGES and rows == distinct

    resumed = geocurate("run", "images", env=env, cwd=cwd)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "run 1: resumed" in resumed.stdout
    assert runs(url) == [(1, "done")]
    assert scores_per_image(url) == (IMAGES, IMAGES, IMAGES)  # every image scored, once


def test_run_with_workers_exits_1_when_a_worker_fails_a_batch(worker_env, monkeypatch, tmp_path):
    """A real worker on Redis and PostgreSQL fails one score batch: `geocurate run` (which only submits and
    follows) reports the run partial, names the batch, and exits 1."""
    from tests.local_workers import READY_MARK

    _, settings, workers = private_workers(worker_env, monkeypatch, tmp_path, "failing", GEOCURATE_BATCH_SIZE="3")
    url = settings.database_url
    write_images(tmp_path / "images", 6, start=100)
    env = {**workers.env, "OMP_NUM_THREADS": "1"}
    try:
        workers.start("w")
        workers.wait_for(["w"], READY_MARK, 120)
        assert geocurate("ingest", "images", str(tmp_path / "images"), env=env, cwd=tmp_path).returncode == 0
        fail_scores_of(url, "street_104.png")
        run = geocurate("run", str(tmp_path / "images"), env=env, cwd=tmp_path)
    finally:
        workers.stop_all()
        allow_scores(url)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "partial" in run.stderr and "failed: step score, batch 1" in run.stderr
    assert "refused on purpose" in run.stderr


def test_an_unreachable_broker_is_one_line(embedded):
    env, cwd, _ = embedded
    env = {**env, "GEOCURATE_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"}
    started = time.monotonic()
    result = geocurate("run", "images", env=env, cwd=cwd, timeout=60)
    assert result.returncode == 2
    assert time.monotonic() - started < 30
    assert result.stderr.strip().count("\n") == 0 and "cannot reach the broker at redis://:***@127.0.0.1:1/0" in \
        result.stderr
    assert "hunter2" not in result.stdout + result.stderr and "Traceback" not in result.stderr
