"""The whole flow with every real part: PostgreSQL, Redis, a real `geocurate worker` process and the real Label
Studio server. ingest 50 images + 30 clues → score → push to review → annotate through the API → pull → export
with geo-aware splits → train both stages (tiny model) → evaluate, asserting the counts at every step and that the
human labels changed the export.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import models as m
from db.engine import session_scope
from geocurate.export_format import Example, location_file
from geocurate.cli.sample_data import generate_sample
from geocurate.settings import reload_settings
from tests.conftest import create_pg_database, drop_pg_database
from tests.test_workers_celery import REDIS_SERVER, Workers, drop_keys, require_redis
from tests.local_workers import ROOT, wait_for_run
from training.adapters import adapter_digest
from training.geo import geo_metrics

pytest_plugins = ["tests.labelstudio_server"]
pytestmark = [pytest.mark.e2e, pytest.mark.labelstudio, pytest.mark.redis, pytest.mark.postgres]

RUN_TIMEOUT = 600
ALL_QUEUES = "ingest,score,review,export,train"


@pytest.fixture
def e2e_env(label_studio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """One environment shared by this test process and the worker: store, broker, Label Studio, demo models."""
    require_redis()
    url = create_pg_database("geocurate_e2e", migrated=True)
    prefix = f"gc-e2e-{uuid.uuid4().hex[:8]}-"
    settings = {
        "GEOCURATE_DATABASE_URL": url,
        "GEOCURATE_BROKER_URL": REDIS_SERVER,
        "GEOCURATE_QUEUE_PREFIX": prefix,
        "GEOCURATE_DEMO_MODELS": "1",
        "GEOCURATE_SEGMENTER": "maskformer",  # the fast tiny route; the SAM route is covered by the scoring tests
        "GEOCURATE_SCORE_DTYPE": "float32",
        "GEOCURATE_DEVICE": "cpu",
        "GEOCURATE_BATCH_SIZE": "16",
        # every scored image goes to review, so the test can pick images on both sides of the export threshold
        "GEOCURATE_REVIEW_BAND_LOW": "0.0",
        "GEOCURATE_REVIEW_BAND_HIGH": "1.0",
        # the tiny random open_clip puts every image above 0.95 of some other: only copies count as duplicates here
        "GEOCURATE_DEDUP_SIMILARITY": "0.999",
        "GEOCURATE_LABEL_STUDIO_URL": label_studio.url,
        "GEOCURATE_LABEL_STUDIO_API_KEY": label_studio.token,
        "GEOCURATE_LABEL_STUDIO_IMAGE_ROOT": str(label_studio.image_root),
        "GEOCURATE_DATA_DIR": str(tmp_path / "data"),
        "GEOCURATE_EXPORT_DIR": str(tmp_path / "exports"),
        "GEOCURATE_ADAPTERS_DIR": str(tmp_path / "adapters"),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    env = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    env.update(settings, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        yield reload_settings(), env
    finally:
        drop_keys(prefix)
        drop_pg_database(url)


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_the_whole_flow_with_every_real_part(e2e_env, label_studio, tmp_path: Path) -> None:
    from curation.export import ExportParams, build_export
    from labeling.client import make_client
    from labeling.configs import CLUE_REVIEW, IMAGE_REVIEW
    from labeling.pull import pull_annotations
    from training.evaluate import evaluate_export
    from workers.pipeline import run_pipeline, submit_training

    settings, env = e2e_env
    url = settings.database_url
    sample = generate_sample(label_studio.image_root / "e2e", n_images=50, n_clues=30, seed=7)
    workers = Workers(env, tmp_path / "logs")
    try:
        workers.start("e2e", queues=ALL_QUEUES)
        workers.wait_ready("e2e")

        # ingest → score → route (pushed to Label Studio by the route step)
        run_id = run_pipeline(sample.images_dir, sample.metadata_csv, sample.clues_jsonl, settings=settings)
        state = wait_for_run(run_id, RUN_TIMEOUT, settings)
        assert state["status"] == "done", state
        bad_images = len(sample.corrupt_images) + len(sample.invalid_coordinate_rows)
        with session_scope(url) as s:
            images = count(s, m.Image)
            assert images == len(sample.image_files) - bad_images == 48
            assert count(s, m.Score) == images  # every readable image scored exactly once
            assert count(s, m.Quarantine, m.Quarantine.item_kind == "image") >= len(sample.corrupt_images)
            clue_states = dict(s.execute(select(m.Clue.status, func.count()).group_by(m.Clue.status)).tuples().all())
            assert clue_states.get("rejected", 0) >= len(sample.placeless_clue_lines)
            assert clue_states.get("accepted", 0) > 0 and clue_states.get("review", 0) > 0
            assert sum(clue_states.values()) == (sample.clue_lines - len(sample.malformed_clue_lines)
                                                 - len(sample.duplicate_clue_lines))
            review = {(r.item_kind, r.item_id): r for r in s.scalars(select(m.ReviewTask))}
            scores = dict(s.execute(select(m.Score.image_id, m.Score.locatability)).tuples().all())
        image_tasks = {k: r for k, r in review.items() if k[0] == "image"}
        clue_tasks = {k: r for k, r in review.items() if k[0] == "clue"}
        assert len(image_tasks) == images and len(clue_tasks) == clue_states["review"]
        assert all(r.ls_task_id for r in review.values()), "every routed item is a Label Studio task"
        client = make_client(settings)
        in_label_studio = sum(len(client.tasks.list(project=p.id, page_size=500).items or [])
                              for p in client.projects.list(page_size=100).items)
        assert in_label_studio == len(review)

        # annotate through the API as the UI would: rescue a low score, drop a high one, reject a clue
        ordered = sorted(scores, key=scores.get)
        threshold = scores[ordered[len(ordered) // 2]]
        rescued, dropped = ordered[0], ordered[-1]
        assert scores[rescued] < threshold <= scores[dropped]
        client.annotations.create(id=image_tasks["image", rescued].ls_task_id, lead_time=5,
                                  result=[IMAGE_REVIEW.choice_result("locatable")])
        client.annotations.create(id=image_tasks["image", dropped].ls_task_id, lead_time=5,
                                  result=[IMAGE_REVIEW.choice_result("not_locatable")])
        clue_key = sorted(clue_tasks)[0]
        client.annotations.create(id=clue_tasks[clue_key].ls_task_id, lead_time=5,
                                  result=[CLUE_REVIEW.choice_result("no_geo_clue")])
        pulled = pull_annotations(url, settings=settings)
        with session_scope(url) as s:
            assert count(s, m.Annotation) == 3
            done = {(r.item_kind, r.item_id): r.final_label
                    for r in s.scalars(select(m.ReviewTask).where(m.ReviewTask.state == "done"))}
            assert s.get(m.Clue, clue_key[1]).status == "rejected"
        assert done == {("image", rescued): "locatable", ("image", dropped): "not_locatable",
                        clue_key: "no_geo_clue"}, pulled

        # export with geo-aware splits: the human labels decide both images; every other image still waits in the
        # all-covering band, so the score decides them (--pending score; the default would leave them out)
        export = build_export(ExportParams.from_settings(settings, "e2e", threshold=threshold, pending="score"), url)
        with session_scope(url) as s:
            items = s.execute(select(m.ExportItem.image_id, m.ExportItem.split, m.Image.city)
                              .join(m.Image, m.Image.id == m.ExportItem.image_id)
                              .where(m.ExportItem.export_id == export.export_id,
                                     m.ExportItem.dataset == "location")).all()
        exported = {image_id for image_id, _, _ in items}
        assert rescued in exported and dropped not in exported
        kept_by_score = {i for i in scores if scores[i] >= threshold}
        assert len(exported) == len(kept_by_score - {dropped} | {rescued}) - export.removed_duplicates
        splits_of_city = defaultdict(set)
        for _, split, city in items:
            splits_of_city[city].add(split)
        assert all(len(splits) == 1 for splits in splits_of_city.values()), splits_of_city
        assert {split for _, split, _ in items} >= {"train", "test"}

        # two-stage training on the worker's train queue, then evaluation of base + both adapters
        train_run = submit_training(export.export_id, settings=settings)
        state = wait_for_run(train_run, RUN_TIMEOUT, settings)
        assert state["status"] == "done", state
        with session_scope(url) as s:
            stages = s.execute(select(m.TrainingRun.stage, m.TrainingRun.status)
                               .where(m.TrainingRun.export_id == export.export_id).order_by(m.TrainingRun.id)).all()
        assert [tuple(row) for row in stages] == [("reasoning", "done"), ("location", "done")]
        metrics = evaluate_export(Path(export.path), settings=settings)
        test_ids = {image_id for image_id, split, _ in items if split == "test"}
        assert metrics["n"] == len(test_ids) > 0

        # The adapters are the export's own, and the files on disk are the ones each run recorded.
        with session_scope(url) as s:
            trained = {r.stage: (r.id, r.adapter_path, r.adapter_sha256, r.export_name, r.base_model)
                       for r in s.scalars(select(m.TrainingRun).where(m.TrainingRun.export_id == export.export_id,
                                                                      m.TrainingRun.stage != "eval"))}
            eval_row = s.get(m.TrainingRun, metrics["run_id"])
            stored_metrics = dict(eval_row.metrics)
        assert set(trained) == {"reasoning", "location"}
        for stage, (run_id, path, sha256, export_name, base_model) in trained.items():
            assert Path(path) == (settings.adapters_dir / "e2e" / stage).resolve()
            assert sha256 == adapter_digest(Path(path)) and export_name == "e2e"
            assert Path(base_model).is_absolute() and Path(base_model).is_dir()
        assert metrics["adapter_runs"] == {stage: row[0] for stage, row in trained.items()}
        assert stored_metrics["country_accuracy"] == metrics["country_accuracy"]

        # The metrics are what the stored answers and the test split's labels give, recomputed here.
        labels = {e.id: e for e in (Example.from_line(line) for line in
                                    location_file(Path(export.path), "test").read_text().splitlines())}
        answers = {a["id"]: a for a in map(json.loads, Path(metrics["predictions"]).read_text().splitlines())}
        assert set(answers) == set(labels) and len(labels) == len(test_ids)
        rows = [dict(truth_code=e.country_code, truth_city=e.city, truth_lat=e.lat, truth_lon=e.lon,
                     pred_code=answers[i]["pred_code"], pred_city=answers[i]["pred_city"],
                     parsed=answers[i]["parsed"]) for i, e in labels.items()]
        recomputed = geo_metrics(rows)
        assert {key: metrics[key] for key in recomputed} == recomputed
        hits = sum(answers[i]["pred_code"] == e.country_code for i, e in labels.items())
        assert metrics["country_accuracy"] == round(hits / len(labels), 4)
        assert metrics["parse_failure_rate"] == round(sum(not a["parsed"] for a in answers.values()) / len(labels), 4)
    finally:
        workers.stop_all()
