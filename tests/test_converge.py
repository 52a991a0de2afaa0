"""`geocurate run` converges: a second run after a threshold/band change carries every score over to the new scorer
version, retires the old band's review tasks and routes the new band; a run with nothing changed does nothing and says
so, `--export NAME` included; other content under an existing export name is refused with what changed, exit 1. A
clue accepted in review is paired, and when pairing adds nothing it says why. Real `geocurate` processes (embedded,
SQLite) and, for the workers' side, a real Celery worker on Redis and PostgreSQL."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from db.batches import step_results
from db.engine import session_scope
from db.models import Batch, Export, ReviewTask, Run, Score
from tests.scoring_images import write_images
from tests.test_runs import embedded, geocurate  # noqa: F401 - fixture
from tests.test_workers_celery import private_workers, worker_env  # noqa: F401 - fixture

CITIES = [("PL", "Kraków", 50.06, 19.94), ("PL", "Gdańsk", 54.35, 18.65), ("FR", "Lyon", 45.76, 4.84),
          ("FR", "Paris", 48.86, 2.35), ("DE", "Bonn", 50.73, 7.10), ("DE", "Köln", 50.94, 6.96)]


def write_metadata(images: Path) -> Path:
    path = images.parent / "metadata.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "lat", "lon", "country_code", "city", "source"])
        for n, image in enumerate(sorted(images.iterdir())):
            country, city, lat, lon = CITIES[n % len(CITIES)]
            writer.writerow([image.name, lat + n * 0.001, lon, country, city, "test"])
    return path


def scores(url: str, version: str | None = None) -> list[float]:
    with session_scope(url) as session:
        query = select(Score.locatability)
        if version:
            query = query.where(Score.scorer_version == version)
        return sorted(session.scalars(query))


def result_of(url: str, run_id: int, step: str, key: str) -> list:
    with session_scope(url) as session:
        return [r[key] for r in step_results(session, run_id, step) if key in r]


def task_states(url: str) -> dict[tuple[str, str | None], int]:
    with session_scope(url) as session:
        rows = session.execute(select(ReviewTask.state, ReviewTask.scorer_version, func.count())
                               .where(ReviewTask.item_kind == "image")
                               .group_by(ReviewTask.state, ReviewTask.scorer_version)).all()
    return {(state, version): n for state, version, n in rows}


def band_env(values: list[float], low: int, threshold: int, high: int) -> dict[str, str]:
    """A threshold and band between stored scores, so that the band holds a known number of images."""
    def between(i: int) -> str:
        return repr((values[i - 1] + values[i]) / 2)
    return {"GEOCURATE_THRESHOLD": between(threshold), "GEOCURATE_REVIEW_BAND_LOW": between(low),
            "GEOCURATE_REVIEW_BAND_HIGH": between(high)}


def test_a_second_run_converges_and_a_third_has_nothing_to_do(embedded):
    env, cwd, url = embedded
    metadata = write_metadata(cwd / "images")
    first = geocurate("run", "images", "--metadata", str(metadata), env=env, cwd=cwd)
    assert first.returncode == 0, first.stdout + first.stderr
    values = scores(url)
    assert len(values) == 12 and len(set(values)) == 12

    changed = {**env, **band_env(values, low=3, threshold=6, high=9)}  # six images in the new band
    second = geocurate("run", "images", "--metadata", str(metadata), env=changed, cwd=cwd)
    assert second.returncode == 0, second.stdout + second.stderr
    [version] = result_of(url, 2, "score", "scorer_version")  # the converge batch: no new image was scored
    assert result_of(url, 2, "score", "carried_over") == [12]
    assert "12 score(s) carried over" in second.stdout
    assert result_of(url, 2, "route", "routed") == [6]
    assert scores(url, version) == values  # the same images, every one under the new version
    assert task_states(url).get(("pending", version)) == 6

    third = geocurate("run", "images", "--metadata", str(metadata), env=changed, cwd=cwd)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "run 3 done, nothing to do: no new images (12 already stored)" in third.stdout
    assert f"every image already scored under scorer {version}" in third.stdout
    assert "review queue current" in third.stdout
    assert result_of(url, 3, "route", "routed") == [0] and result_of(url, 3, "score", "carried_over") == [0]

    # another band: the six tasks of the old version are retired, those in the new band queued again
    moved = {**env, **band_env(values, low=1, threshold=3, high=5)}  # images 1..4; 3 and 4 were in the old band
    fourth = geocurate("run", "images", "--metadata", str(metadata), env=moved, cwd=cwd)
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert "6 stale review task(s) retired" in fourth.stdout
    [newest] = result_of(url, 4, "score", "scorer_version")
    states = task_states(url)
    assert states[("pending", newest)] == 4 and states[("retired", version)] == 4
    assert sum(n for (state, _), n in states.items() if state == "pending") == 4  # nothing of the old band left open


def test_run_export_twice_is_a_no_op_and_other_content_under_the_name_is_refused(embedded):
    env, cwd, url = embedded
    metadata = write_metadata(cwd / "images")
    assert geocurate("run", "images", "--metadata", str(metadata), env=env, cwd=cwd).returncode == 0
    values = scores(url)
    keep_half = {**env, **band_env(values, low=1, threshold=6, high=2)}  # band [v1, v2): one image pending
    built = geocurate("run", "images", "--metadata", str(metadata), "--export", "v1", env=keep_half, cwd=cwd)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "export v1 built" in built.stdout
    with session_scope(url) as session:
        export = session.scalar(select(Export).where(Export.name == "v1"))
        content_hash, selection = export.content_hash, export.selection
    assert selection["kept_images"] == 6 and len(selection["fingerprint"]) == 64

    again = geocurate("run", "images", "--metadata", str(metadata), "--export", "v1", env=keep_half, cwd=cwd)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout and f"export v1 unchanged (content hash {content_hash[:12]})" in again.stdout
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(Export)) == 1
        assert [s for s, in session.execute(select(Run.status).order_by(Run.id))] == ["done", "done", "done"]

    lower = {**env, **band_env(values, low=1, threshold=4, high=2)}  # two more images kept
    refused = geocurate("run", "images", "--metadata", str(metadata), "--export", "v1", env=lower, cwd=cwd)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr
    assert "export 'v1' already exists with other content" in message
    assert "threshold" in message and "kept images 6 -> 8" in message and "choose a new name" in message
    assert "Traceback" not in message
    assert "change what was refused" in message and "run the same command again" not in message
    with session_scope(url) as session:
        assert session.scalar(select(Export.content_hash).where(Export.name == "v1")) == content_hash  # untouched

    # an export built by `geocurate export` records its selection too: `run --export` with the same name is a no-op
    assert geocurate("export", "v2", env=lower, cwd=cwd).returncode == 0
    same = geocurate("run", "images", "--metadata", str(metadata), "--export", "v2", env=lower, cwd=cwd)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "export v2 unchanged" in same.stdout


def test_runs_list_and_review_list_show_what_a_person_needs(embedded):
    env, cwd, url = embedded
    metadata = write_metadata(cwd / "images")
    values_env = env
    assert geocurate("run", "images", "--metadata", str(metadata), env=values_env, cwd=cwd).returncode == 0
    changed = {**env, **band_env(scores(url), low=3, threshold=6, high=9), "COLUMNS": "250"}
    assert geocurate("run", "images", "--metadata", str(metadata), env=changed, cwd=cwd).returncode == 0
    listed = geocurate("runs", "list", env=changed, cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    assert "pipeline runs" in listed.stdout and "training runs" in listed.stdout
    assert "carried_over=12" in listed.stdout and "routed=6" in listed.stdout
    assert listed.stdout.count("done") >= 2
    queue = geocurate("review", "list", "--kind", "images", env=changed, cwd=cwd)
    assert queue.returncode == 0, queue.stderr
    lines = [line for line in queue.stdout.splitlines() if "street_" in line]
    assert len(lines) == 6
    assert all(any(f" {code} " in line for code in ("PL", "FR", "DE")) for line in lines)
    in_band = {f"{v:.3f}" for v in scores(url)[3:9]}
    assert all(any(score in line for score in in_band) for line in lines)


# --- clue pairing after review --------------------------------------------------------------------------------------

def test_a_clue_accepted_in_review_is_paired_and_an_empty_pass_says_why(sqlite_store, tmp_path):
    from curation.clip import build_clip
    from curation.clues.ingest import clue_sha256
    from curation.pairing import pair_clues_explained
    from db.clues import add_clues
    from db.images import add_images
    from db.models import Clue, CluePair
    from db.review import add_review_tasks, set_decision

    clip = build_clip("unused", None, demo=True, dtype="float32")
    rng = np.random.default_rng(1)
    images = []
    for n in range(3):
        path = tmp_path / f"{n}.png"
        PILImage.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        images.append(dict(sha256=f"{n:064x}", uri=str(path), country_code="GE", status="scored"))
    texts = ["Georgia again, the curly alphabet.", "Georgia, or the US state?"]
    with session_scope(sqlite_store) as s:
        add_images(s, images)
        add_clues(s, [dict(sha256=clue_sha256(t), text=t, country=None, status="review", geo_ok=True) for t in texts])
        clue_ids = list(s.scalars(select(Clue.id).order_by(Clue.id)))
        add_review_tasks(s, [dict(item_kind="clue", item_id=i, priority=0.5, reason="ambiguous") for i in clue_ids])
    with session_scope(sqlite_store) as s:
        assert pair_clues_explained(s, clip, 2, -1.0).why_none() == "no accepted clue without an image or pair"
        tasks = list(s.scalars(select(ReviewTask).order_by(ReviewTask.item_id)))
        set_decision(s, tasks[0], "done", "geo_clue", "GE")  # accepted with a country
        set_decision(s, tasks[1], "done", "geo_clue", None)  # accepted, no country given

    with session_scope(sqlite_store) as s:
        strict = pair_clues_explained(s, clip, 2, 1.01)  # nothing can reach it
    assert strict.added == 0 and strict.clues_below_similarity == 1 and strict.clues_without_country == 1
    why = strict.why_none()
    assert "1 clue(s) have no same-country image at or above the minimum similarity 1.01 (best " in why
    assert "1 accepted clue(s) have no country" in why

    with session_scope(sqlite_store) as s:
        paired = pair_clues_explained(s, clip, 2, -1.0)
    assert (paired.added, paired.clues_paired, paired.why_none()) == (2, 1, "")
    with session_scope(sqlite_store) as s:
        assert s.scalar(select(func.count()).select_from(CluePair).where(CluePair.clue_id == clue_ids[0])) == 2
        again = pair_clues_explained(s, clip, 2, -1.0)
    assert again.added == 0 and "no accepted clue without an image or pair" in again.why_none()


def test_clues_pair_command_explains_an_empty_pass(embedded):
    env, cwd, url = embedded
    from curation.clues.ingest import clue_sha256
    from db.clues import add_clues

    with session_scope(url) as s:
        add_clues(s, [dict(sha256=clue_sha256("Somewhere in Chile."), text="Somewhere in Chile.", country="CL",
                           status="accepted", geo_ok=True)])
    result = geocurate("clues", "pair", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "pairs added: 0 (0 of 1 clue(s) paired" in result.stdout
    assert "nothing paired: 1 clue(s) have no stored image of their country" in result.stdout


# --- with a worker --------------------------------------------------------------------------------------------------

def test_with_a_worker_a_second_run_carries_over_and_a_third_does_nothing(worker_env, monkeypatch, tmp_path):
    """The converge batch runs on the scoring worker (it needs the models' identity): the worker's settings choose
    the current version, so the worker is restarted with the new threshold and band, as a deployment would be."""
    from tests.local_workers import READY_MARK

    _, settings, workers = private_workers(worker_env, monkeypatch, tmp_path, "converge", GEOCURATE_BATCH_SIZE="6")
    url = settings.database_url
    images = tmp_path / "images"
    write_images(images, 12, start=300)
    metadata = write_metadata(images)
    env = {**workers.env, "OMP_NUM_THREADS": "1"}
    try:
        workers.start("w")
        workers.wait_for(["w"], READY_MARK, 120)
        first = geocurate("run", str(images), "--metadata", str(metadata), env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        workers.stop_all()
        with session_scope(url) as session:
            values = sorted(session.scalars(select(Score.locatability)))
            first_run = session.scalar(select(func.max(Run.id)))
        changed = {**env, **band_env(values, low=3, threshold=6, high=9)}
        workers.env.update(band_env(values, low=3, threshold=6, high=9))
        workers.start("w2")
        workers.wait_for(["w2"], READY_MARK, 120)
        second = geocurate("run", str(images), "--metadata", str(metadata), env=changed, cwd=tmp_path)
        third = geocurate("run", str(images), "--metadata", str(metadata), env=changed, cwd=tmp_path)
    finally:
        workers.stop_all()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "12 score(s) carried over" in second.stdout and "6 item(s) queued for review" in second.stdout
    assert result_of(url, first_run + 1, "route", "routed") == [6]
    assert third.returncode == 0, third.stdout + third.stderr
    assert "nothing to do" in third.stdout
    with session_scope(url) as session:
        assert not session.scalar(select(func.count()).select_from(Batch).where(Batch.status == "failed"))


def test_a_stage_trained_on_an_unchanged_export_is_not_trained_again(store_url):
    """A pipeline run's train step skips a stage already done on that export; `geocurate train` (kind "train")
    trains again on purpose. The stage that was never trained is not skipped."""
    from db.batches import Claim, latest_done_training
    from db.models import TrainingRun
    from geocurate.settings import get_settings
    from workers.steps import work_train

    with session_scope(store_url) as session:
        export = Export(name="v1", threshold=0.4, params={}, path="/nowhere", status="done", counts={})
        session.add(export)
        session.flush()
        session.add_all([TrainingRun(export_id=export.id, stage="reasoning", status="failed", config={}, metrics={}),
                         TrainingRun(export_id=export.id, stage="reasoning", status="done", config={}, metrics={})])
        session.flush()
        done_id = session.scalar(select(TrainingRun.id).where(TrainingRun.status == "done"))
        export_id = export.id
    claim = Claim(1, 1, "train:reasoning", 0, {"stage": "reasoning", "export": "v1"}, "test")
    with session_scope(store_url) as session:
        result = work_train(session, claim, {"kind": "pipeline", "steps": ["train:reasoning"]}, get_settings())
        assert latest_done_training(session, export_id, "location") is None
    assert result == {"stage": "reasoning", "already_trained": 1, "training_run": done_id}
