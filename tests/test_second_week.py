"""A curator's second week, as users live it, on PostgreSQL with a real Celery worker and the real Label Studio:
run; review a few images in Label Studio; change threshold and band (and restart the worker, whose settings pick the
current version); run again; ingest near-copies of earlier images filed under other city spellings; export `v1` and
train it; rescore to a second version, export `v2` and train it; then check what each role relies on: scores carried
over, stale tasks retired (annotated ones kept), no image waiting for review in an `exclude` export, no near-duplicate
across splits, one adapter folder per export whose hashes match their runs, `eval v1` on `v1`'s adapters, and a run
with nothing changed doing nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import unicodedata
import uuid
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from db import models as m
from db.engine import session_scope
from geocurate.cli.sample_data import generate_sample
from tests.conftest import create_pg_database, drop_pg_database
from tests.local_workers import ROOT
from tests.test_workers_celery import REDIS_SERVER, Workers, drop_keys, require_redis

pytest_plugins = ["tests.labelstudio_server"]
pytestmark = [pytest.mark.e2e, pytest.mark.labelstudio, pytest.mark.redis, pytest.mark.postgres]

TIMEOUT = 600
COPIES = 3


@pytest.fixture
def week(label_studio, tmp_path: Path):
    """The environment every `geocurate` process of the week shares: store, broker, Label Studio, demo models."""
    require_redis()
    url = create_pg_database("geocurate_week", migrated=True)
    prefix = f"gc-week-{uuid.uuid4().hex[:8]}-"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    env.update({
        "GEOCURATE_DATABASE_URL": url, "GEOCURATE_BROKER_URL": REDIS_SERVER, "GEOCURATE_QUEUE_PREFIX": prefix,
        "GEOCURATE_DEMO_MODELS": "1", "GEOCURATE_SEGMENTER": "maskformer", "GEOCURATE_SCORE_DTYPE": "float32",
        "GEOCURATE_DEVICE": "cpu", "GEOCURATE_BATCH_SIZE": "16",
        "GEOCURATE_DEDUP_SIMILARITY": "0.999",  # random-weight embeddings: only copies are near-duplicates
        "GEOCURATE_LABEL_STUDIO_URL": label_studio.url, "GEOCURATE_LABEL_STUDIO_API_KEY": label_studio.token,
        "GEOCURATE_LABEL_STUDIO_IMAGE_ROOT": str(label_studio.image_root),
        "GEOCURATE_DATA_DIR": str(tmp_path / "data"), "GEOCURATE_EXPORT_DIR": str(tmp_path / "exports"),
        "GEOCURATE_ADAPTERS_DIR": str(tmp_path / "adapters"),
        # week one: every score is reviewed, so the team has tasks to answer
        "GEOCURATE_THRESHOLD": "0.3", "GEOCURATE_REVIEW_BAND_LOW": "0.0", "GEOCURATE_REVIEW_BAND_HIGH": "1.01",
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    })
    workers = Workers(env, tmp_path / "logs")
    try:
        yield env, url, workers
    finally:
        workers.stop_all()
        drop_keys(prefix)
        drop_pg_database(url)


def geocurate(*args: str, env: dict[str, str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "geocurate.cli", *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=TIMEOUT)
    if ok:
        assert result.returncode == 0, f"geocurate {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def start_worker(workers: Workers, env: dict[str, str]) -> None:
    """A worker's own settings choose the version new work is scored and routed under: a threshold change restarts it."""
    workers.stop_all()
    workers.env = env
    name = f"w{len(workers.procs)}"
    workers.start(name, queues="ingest,score,review,export")
    workers.wait_ready(name)


def scores_of(url: str, version: str) -> dict[int, float]:
    with session_scope(url) as s:
        return dict(s.execute(select(m.Score.image_id, m.Score.locatability)
                              .where(m.Score.scorer_version == version)).tuples().all())


def newest_version(url: str) -> str:
    with session_scope(url) as s:
        return s.scalar(select(m.ScorerVersion.version).order_by(m.ScorerVersion.created_at.desc()).limit(1))


def image_tasks(url: str) -> dict[int, m.ReviewTask]:
    with session_scope(url) as s:
        tasks = s.scalars(select(m.ReviewTask).where(m.ReviewTask.item_kind == "image")).all()
        s.expunge_all()
    return {t.item_id: t for t in tasks}


def ls_task_ids(client) -> set[int]:
    return {t.id for p in client.projects.list(page_size=100).items
            for t in (client.tasks.list(project=p.id, page_size=1000).items or [])}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def plant_near_copies(sample, originals: list[int], url: str, out: Path) -> dict[str, str]:
    """Copies of earlier images with one pixel changed (another sha256, the same view), filed under another spelling
    of their city a few km away, one under another city far away: {copy file name: original uri}."""
    with session_scope(url) as s:
        rows = s.execute(select(m.Image.id, m.Image.uri, m.Image.city, m.Image.country_code, m.Image.lat,
                                m.Image.lon).where(m.Image.id.in_(originals))).all()
    out.mkdir()
    planted = {}
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "lat", "lon", "country_code", "city", "source"])
        for n, (image_id, uri, city, country, lat, lon) in enumerate(rows):
            source = Path(uri.removeprefix("file://"))
            copy = PILImage.open(source).convert("RGB")
            pixel = copy.getpixel((0, 0))
            copy.putpixel((0, 0), ((pixel[0] + 1) % 256, pixel[1], pixel[2]))
            name = f"copy_{image_id}.png"
            copy.save(out / name)
            folded = unicodedata.normalize("NFKD", city).encode("ascii", "ignore").decode()
            spelling = folded.lower() if folded != city else city.upper()
            if n == 0:  # the last one filed under another city, far away: a near-duplicate across places
                spelling, lat = "Elsewhere", lat + 1.5
            writer.writerow([name, lat + 0.02, lon + 0.02, country, spelling, "recrawl"])
            planted[name] = uri
    return planted


def test_a_curators_second_week(week, label_studio, tmp_path: Path) -> None:
    from labeling.client import make_client
    from labeling.configs import IMAGE_REVIEW
    from geocurate.settings import Settings
    from training.adapters import adapter_digest

    env, url, workers = week
    sample = generate_sample(label_studio.image_root / "week", n_images=30, n_clues=12, seed=5)
    client = make_client(Settings(label_studio_url=env["GEOCURATE_LABEL_STUDIO_URL"],
                                  label_studio_api_key=env["GEOCURATE_LABEL_STUDIO_API_KEY"]))
    images_args = [str(sample.images_dir), "--metadata", str(sample.metadata_csv)]

    # --- week one: every image goes to review; the team answers three of them, two pulled before the change
    start_worker(workers, env)
    geocurate("run", *images_args, "--clues", str(sample.clues_jsonl), env=env, cwd=tmp_path)
    v1 = newest_version(url)
    first = scores_of(url, v1)
    tasks = image_tasks(url)
    assert len(first) >= 20 and set(tasks) == set(first) and all(t.ls_task_id for t in tasks.values())
    ordered = sorted(first, key=first.get)
    rescued, dropped, late = ordered[0], ordered[-1], ordered[1]
    for image_id, choice in ((rescued, "locatable"), (dropped, "not_locatable")):
        client.annotations.create(id=tasks[image_id].ls_task_id, lead_time=3, result=[IMAGE_REVIEW.choice_result(choice)])
    geocurate("review", "pull", env=env, cwd=tmp_path)
    client.annotations.create(id=tasks[late].ls_task_id, lead_time=3,
                              result=[IMAGE_REVIEW.choice_result("locatable")])  # answered, not yet pulled

    # --- the curator moves threshold and band to the middle of the scores; the worker restarts with them
    values = list(first.values())
    threshold = quantile(values, 0.5)
    low, high = quantile(values, 0.3), quantile(values, 0.7)
    assert low < threshold < high
    env2 = {**env, "GEOCURATE_THRESHOLD": repr(threshold), "GEOCURATE_REVIEW_BAND_LOW": repr(low),
            "GEOCURATE_REVIEW_BAND_HIGH": repr(high)}
    start_worker(workers, env2)
    second = geocurate("run", *images_args, env=env2, cwd=tmp_path)
    v2 = newest_version(url)
    assert v2 != v1 and scores_of(url, v2) == first, second.stdout  # carried over, not scored again
    tasks = image_tasks(url)
    assert tasks[rescued].final_label == "locatable" and tasks[dropped].final_label == "not_locatable"
    assert tasks[late].final_label == "locatable"  # answered before the change: pulled, never thrown away
    in_band = {i for i, v in first.items() if low <= v < high} - {rescued, dropped, late}
    for image_id, task in tasks.items():
        if image_id in (rescued, dropped, late):
            assert task.state == "done"
        elif image_id in in_band:
            assert (task.state, task.scorer_version) == ("pending", v2), (image_id, task.state)
        else:
            assert (task.state, task.retired_by) == ("retired", v2), (image_id, task.state)
    live = ls_task_ids(client)
    assert {tasks[i].ls_task_id for i in (rescued, dropped, late)} <= live  # annotated tasks stay in Label Studio
    assert not {t.ls_task_id for t in tasks.values() if t.state == "retired"} & live  # unannotated ones are deleted
    assert {tasks[i].ls_task_id for i in in_band} <= live

    # --- new images arrive: near-copies of kept images, filed under other spellings of their cities
    kept = [i for i in ordered if first[i] >= high][:COPIES]
    assert len(kept) == COPIES
    more = tmp_path / "more"
    planted = plant_near_copies(sample, kept, url, more)
    geocurate("run", str(more), "--metadata", str(more / "metadata.csv"), env=env2, cwd=tmp_path)

    # --- the trainer pulls v1 (images waiting for review left out) and trains it
    geocurate("export", "v1", env=env2, cwd=tmp_path)
    geocurate("train", "v1", env=env2, cwd=tmp_path)
    manifest = json.loads((tmp_path / "exports" / "v1" / "manifest.json").read_text())
    with session_scope(url) as s:
        export_v1 = s.scalar(select(m.Export).where(m.Export.name == "v1"))
        items = s.execute(select(m.ExportItem.image_id, m.ExportItem.split, m.Image.uri)
                          .join(m.Image, m.Image.id == m.ExportItem.image_id)
                          .where(m.ExportItem.export_id == export_v1.id, m.ExportItem.dataset == "location")).all()
        waiting = set(s.scalars(select(m.ReviewTask.item_id).where(m.ReviewTask.item_kind == "image",
                                                                   m.ReviewTask.state == "pending")))
    split_of = {image_id: split for image_id, split, _ in items}
    assert waiting and not waiting & set(split_of), "an image waiting for review was exported"
    assert manifest["counts"]["pending_review"]["pending"] == len(waiting)
    assert rescued in split_of and dropped not in split_of
    split_of_uri = {uri: split for _, split, uri in items}
    for copy, original in planted.items():
        copy_split = next((s for uri, s in split_of_uri.items() if uri.endswith("/" + copy)), None)
        original_split = split_of_uri.get(original)
        assert copy_split is None or original_split is None or copy_split == original_split, (copy, original)
    near = manifest["counts"]["near_duplicates"]
    assert near["searched"] and near["cross_split_after_resolution"] == 0
    assert near["groups"] >= COPIES and near["groups_across_places"] >= 1, near  # spellings joined their place
    assert sum(uri.endswith(tuple("/" + c for c in planted)) or uri in planted.values() for uri in split_of_uri) <= COPIES

    # --- a second version (rescored, no model run) gives v2; its training must not touch v1's adapters
    v1_adapters = tmp_path / "adapters" / "v1"
    before = {stage: adapter_digest(v1_adapters / stage) for stage in ("reasoning", "location")
              if (v1_adapters / stage).is_dir()}
    assert "location" in before
    geocurate("rescore", "--from", v2, "--threshold", repr(quantile(values, 0.4)), env=env2, cwd=tmp_path)
    v3 = newest_version(url)
    assert v3 not in (v1, v2)
    geocurate("export", "v2", "--scorer-version", v3, env=env2, cwd=tmp_path)
    geocurate("train", "v2", env=env2, cwd=tmp_path)
    v2_adapters = tmp_path / "adapters" / "v2"
    assert (v2_adapters / "location").is_dir()
    assert {stage: adapter_digest(v1_adapters / stage) for stage in before} == before  # v1's adapters untouched
    with session_scope(url) as s:
        trained = s.execute(select(m.TrainingRun.export_name, m.TrainingRun.stage, m.TrainingRun.adapter_path,
                                   m.TrainingRun.adapter_sha256)
                            .where(m.TrainingRun.status == "done", m.TrainingRun.stage != "eval")).all()
    assert {(name, stage) for name, stage, _, _ in trained} >= {("v1", "location"), ("v2", "location")}
    for name, stage, path, digest in trained:
        assert Path(path).resolve().is_relative_to((tmp_path / "adapters" / name).resolve()), (name, path)
        assert digest == adapter_digest(Path(path)), (name, stage)

    # --- eval v1 evaluates v1's adapters; a v1 folder changed behind the store's back is refused
    evaluated = geocurate("eval", "v1", "--json", env=env2, cwd=tmp_path)
    with session_scope(url) as s:
        evaluation = s.scalar(select(m.TrainingRun).where(m.TrainingRun.stage == "eval")
                              .order_by(m.TrainingRun.id.desc()).limit(1))
        assert Path(evaluation.adapter_path).resolve() == v1_adapters.resolve(), evaluated.stdout
    swapped = geocurate("eval", "v1", "--adapters", str(v2_adapters), env=env2, cwd=tmp_path, ok=False)
    assert swapped.returncode == 1 and "Traceback" not in swapped.stderr, swapped.stdout + swapped.stderr

    # --- nothing changed: the same run does nothing and says so
    with session_scope(url) as s:
        counts = (s.scalar(select(func.count()).select_from(m.Score)),
                  s.scalar(select(func.count()).select_from(m.ReviewTask)))
    again = geocurate("run", *images_args, env=env2, cwd=tmp_path)
    assert "nothing to do" in again.stdout, again.stdout
    with session_scope(url) as s:
        assert (s.scalar(select(func.count()).select_from(m.Score)),
                s.scalar(select(func.count()).select_from(m.ReviewTask))) == counts
