"""Pending review is a policy, not an accident, in `geocurate run` too: `--pending exclude|score` decides what the
export does with images still waiting for a reviewer (stored with the run), and `--wait-review [--timeout]` holds
the export until the band is answered. A timed-out wait builds nothing, says what is open and how to go on, exits
75 and leaves the run `waiting` (never done); Ctrl-C while waiting exits 130; the same command resumes the same run
and exports once the local queue is answered. Real `geocurate` processes, embedded on SQLite, local review queue."""

from __future__ import annotations

import json
import signal
import time

import pytest
from sqlalchemy import func, select

from db.engine import session_scope
from db.models import Export, ReviewTask, Run
from db.review import set_decision
from tests.scoring_images import write_images
from tests.test_converge import write_metadata
from tests.test_runs import embedded, geocurate, start_geocurate  # noqa: F401 - fixture
from tests.test_workers_celery import private_workers, worker_env  # noqa: F401 - fixture

pytest_plugins = ["tests.labelstudio_server"]

EVERY_SCORE_IN_BAND = {"GEOCURATE_THRESHOLD": "0.5", "GEOCURATE_REVIEW_BAND_LOW": "0",
                       "GEOCURATE_REVIEW_BAND_HIGH": "1.01"}  # all 12 images wait for a reviewer


def open_tasks(url: str) -> list[int]:
    with session_scope(url) as session:
        return list(session.scalars(select(ReviewTask.id).where(ReviewTask.item_kind == "image",
                                                                ReviewTask.state == "pending")
                                    .order_by(ReviewTask.id)))


def answer(url: str, task_ids: list[int], label: str = "locatable") -> None:
    with session_scope(url) as session:
        for task_id in task_ids:
            set_decision(session, session.get(ReviewTask, task_id), "done", label, None)


def run_rows(url: str) -> list[tuple[int, str, dict]]:
    with session_scope(url) as session:
        return [(r.id, r.status, r.params) for r in session.scalars(select(Run).order_by(Run.id))]


def manifest(cwd, name: str) -> dict:
    return json.loads((cwd / "exports" / name / "manifest.json").read_text())


def read_until(process, text: str, timeout: float = 300) -> str:
    """The process's merged output up to the first line containing `text`."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"no line with {text!r} in:\n{''.join(seen)}")


def test_a_timed_out_wait_builds_nothing_and_pending_score_exports_now(embedded):
    env, cwd, url = embedded
    env = {**env, **EVERY_SCORE_IN_BAND}
    metadata = str(write_metadata(cwd / "images"))
    exports = cwd / "exports"

    refused = geocurate("run", "images", "--pending", "score", env=env, cwd=cwd)
    assert refused.returncode != 0 and "--pending needs --export NAME" in refused.stderr
    assert "Traceback" not in refused.stderr

    waited = geocurate("run", "images", "--metadata", metadata, "--export", "v1", "--wait-review", "--timeout", "2",
                       env=env, cwd=cwd)
    assert waited.returncode == 75, waited.stdout + waited.stderr
    assert "export v1 waits for review" in waited.stdout and "threshold 0.5, review band [0, 1.01)" in waited.stdout
    assert "waiting for review: 12 open task(s), pulled 0 answer(s)" in waited.stdout
    assert "run 1 stopped waiting for review: 12 open review task(s)" in waited.stderr
    assert "run the same command again to keep waiting" in waited.stderr and "--pending score" in waited.stderr
    assert "export v1 was not built" in waited.stderr
    assert not (exports / "v1").exists()
    [(run_id, status, params)] = run_rows(url)
    assert status == "waiting" and params["pending"] == "exclude" and params["wait_review"] is True
    assert "timeout" not in params  # another --timeout resumes the same run
    assert len(open_tasks(url)) == 12

    # export now, the score deciding for the images nobody has reviewed yet
    now = geocurate("run", "images", "--metadata", metadata, "--export", "now", "--pending", "score",
                    env=env, cwd=cwd)
    assert now.returncode == 0, now.stdout + now.stderr
    assert "export now built" in now.stdout
    pending = manifest(cwd, "now")["counts"]["pending_review"]
    assert pending["policy"] == "score" and pending["pending"] == 12 and pending["left_out"] == 0
    assert pending["kept_by_score"] + pending["dropped_by_score"] == 12
    assert manifest(cwd, "now")["parameters"]["pending"] == "score"
    assert (f"export now: 12 image(s) waited for review: {pending['kept_by_score']} kept and "
            f"{pending['dropped_by_score']} dropped by their score") in now.stdout
    rows = run_rows(url)
    assert [(status, params["pending"]) for _, status, params in rows] == [("waiting", "exclude"), ("done", "score")]

    # the default policy leaves them all out
    excluded = geocurate("run", "images", "--metadata", metadata, "--export", "excluded", env=env, cwd=cwd)
    assert excluded.returncode == 0, excluded.stdout + excluded.stderr
    left = manifest(cwd, "excluded")["counts"]["pending_review"]
    assert left["policy"] == "exclude" and left["pending"] == 12 and left["left_out"] == 12
    assert manifest(cwd, "excluded")["counts"]["location"]["train"] == 0


def test_the_same_command_resumes_the_wait_and_exports_once_the_band_is_answered(embedded):
    env, cwd, url = embedded
    env = {**env, **EVERY_SCORE_IN_BAND}
    metadata = str(write_metadata(cwd / "images"))
    command = ("run", "images", "--metadata", metadata, "--export", "reviewed", "--wait-review")

    waiting = start_geocurate(*command, env=env, cwd=cwd)
    read_until(waiting, "waiting for review: 12 open task(s)")
    waiting.send_signal(signal.SIGINT)  # Ctrl-C while waiting: stops cleanly, nothing exported
    rest = waiting.communicate(timeout=60)[0]
    assert waiting.returncode == 130, rest
    assert "interrupted at step route" in rest and "Traceback" not in rest
    assert [status for _, status, _ in run_rows(url)] == ["interrupted"]
    assert not (cwd / "exports" / "reviewed").exists()

    tasks = open_tasks(url)
    assert len(tasks) == 12
    answer(url, tasks[:8])
    answer(url, tasks[8:10], "not_locatable")
    decided = geocurate("review", "decide", str(tasks[10]), "locatable", env=env, cwd=cwd)  # the local queue's way
    assert decided.returncode == 0, decided.stderr

    resumed = start_geocurate(*command, env=env, cwd=cwd)
    shown = read_until(resumed, "waiting for review: 1 open task(s)")
    assert "run 1: resumed" in shown
    answer(url, tasks[11:])  # answered while the run waits: it goes on by itself
    rest = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, shown + rest
    assert "export reviewed built" in rest and "run 1 done" in rest

    rows = run_rows(url)
    assert [(run_id, status) for run_id, status, _ in rows] == [(1, "done")]  # one run per command, resumed
    counts = manifest(cwd, "reviewed")["counts"]
    assert counts["pending_review"]["pending"] == 0 and counts["pending_review"]["left_out"] == 0
    located = sum(counts["location"][split] for split in ("train", "val", "test"))
    assert counts["near_duplicates"]["images_compared"] == 10  # the 10 answered locatable, nothing else
    assert located == 10 - counts["near_duplicates"]["removed"] > 0
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(ReviewTask)
                              .where(ReviewTask.state != "done", ReviewTask.item_kind == "image")) == 0


def test_with_a_worker_the_command_waits_and_moves_the_run_on_itself(worker_env, monkeypatch, tmp_path):
    """With workers the route batch ends on a worker, whose hand-over finds the band open and holds the run; the
    command that follows it waits, and once the band is answered moves the run on, the export running on the
    worker. One run, done."""
    from tests.local_workers import READY_MARK

    _, settings, workers = private_workers(worker_env, monkeypatch, tmp_path, "wait", GEOCURATE_BATCH_SIZE="6",
                                           GEOCURATE_EXPORT_DIR=str(tmp_path / "exports"), **EVERY_SCORE_IN_BAND)
    url = settings.database_url
    images = tmp_path / "images"
    write_images(images, 12, start=500)
    metadata = write_metadata(images)
    env = {**workers.env, "OMP_NUM_THREADS": "1"}
    try:
        workers.start("w")
        workers.wait_for(["w"], READY_MARK, 120)
        running = start_geocurate("run", str(images), "--metadata", str(metadata), "--export", "w1",
                                  "--wait-review", env=env, cwd=tmp_path)
        shown = read_until(running, "waiting for review: 12 open task(s)")
        with session_scope(url) as session:
            [(run_id, status, step)] = session.execute(select(Run.id, Run.status, Run.step)).all()
            assert (status, step) == ("running", "route")  # held at the gate, not done, nothing exported
            assert session.scalar(select(func.count()).select_from(Export)) == 0
        answer(url, open_tasks(url))
        rest = running.communicate(timeout=300)[0]
    finally:
        workers.stop_all()
    assert running.returncode == 0, shown + rest
    assert "export w1 built" in rest
    with session_scope(url) as session:
        assert session.scalar(select(Run.status).where(Run.id == run_id)) == "done"
        export = session.scalar(select(Export).where(Export.name == "w1"))
        assert export.status == "done" and export.counts["pending_review"]["pending"] == 0
    assert (tmp_path / "exports" / "w1" / "manifest.json").is_file()


@pytest.mark.labelstudio
def test_against_label_studio_the_wait_pulls_the_answers_and_then_exports(embedded, label_studio):
    """The route step pushes the band to the real Label Studio; the waiting command pulls what annotators answer
    there and exports once every task of the band is answered."""
    from labeling.client import make_client
    from labeling.configs import IMAGE_REVIEW
    from geocurate.settings import get_settings
    from tests.test_labeling_server import annotate

    env, cwd, url = embedded
    env = {**env, **EVERY_SCORE_IN_BAND, "GEOCURATE_LABEL_STUDIO_URL": label_studio.url,
           "GEOCURATE_LABEL_STUDIO_API_KEY": label_studio.token,
           "GEOCURATE_LABEL_STUDIO_IMAGE_ROOT": str(label_studio.image_root),
           "GEOCURATE_TASK_MAX_RETRIES": "2", "GEOCURATE_RETRY_BACKOFF_MAX": "1"}
    images = label_studio.image_root / f"wait-{cwd.name}" / "images"
    write_images(images, 12)
    metadata = str(write_metadata(images))

    running = start_geocurate("run", str(images), "--metadata", metadata, "--export", "ls", "--wait-review",
                              env=env, cwd=cwd)
    try:
        shown = read_until(running, "waiting for review: 12 open task(s), pulled 0 answer(s)")
        assert "answers are pulled from Label Studio" in shown
        with session_scope(url) as session:
            pushed = list(session.scalars(select(ReviewTask.ls_task_id).where(ReviewTask.item_kind == "image")))
        assert len(pushed) == 12 and None not in pushed
        client = make_client(get_settings())
        for ls_task_id in pushed[:9]:
            annotate(client, ls_task_id, IMAGE_REVIEW, "locatable")
        shown += read_until(running, "waiting for review: 3 open task(s), pulled 9 answer(s)")
        for ls_task_id in pushed[9:]:
            annotate(client, ls_task_id, IMAGE_REVIEW, "unusable")
        rest = running.communicate(timeout=300)[0]
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 0, shown + rest
    assert "export ls built" in rest
    counts = manifest(cwd, "ls")["counts"]
    assert counts["pending_review"]["pending"] == 0 and counts["near_duplicates"]["images_compared"] == 9
