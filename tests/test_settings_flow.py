"""Settings flow downwards as values: only the CLI and the Celery task code read the process's global settings
(`get_settings()`); the libraries (curation, labeling, training, db and the workers' step functions) use the
settings and store they are given. Before, a training stage given settings for one store recorded its runs in the
store of the process's global settings."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.engine import session_scope
from db.migrate import upgrade
from db.models import Image, Quarantine, ReviewTask, Score, TrainingRun
from geocurate.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_PACKAGES = ("curation", "labeling", "training", "db")
# The workers' modules that are plain functions over the libraries; workers/tasks.py, app.py and process.py are the
# Celery task and worker-process code, which read the settings of the process they run in.
WORKER_LIBRARY_MODULES = ("workers.steps", "workers.pipeline", "workers.broker", "workers.leases")
# Runs only under the `alembic` command line (make migration), where no caller can say which store: see its docstring.
CLI_ONLY = {"db/migrations/env.py"}

IMPORT_EVERY_LIBRARY_MODULE = """
import importlib, json, pkgutil, sys

import geocurate.settings

def refuse(*args, **kwargs):
    raise AssertionError("get_settings() was called while importing a library module")

geocurate.settings.get_settings = refuse
imported = []
for package in %(packages)r:
    root = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name != "db.migrations.env":  # only loadable inside an alembic run
            importlib.import_module(info.name)
            imported.append(info.name)
for name in %(workers)r:
    importlib.import_module(name)
    imported.append(name)
try:
    importlib.import_module("workers.app")  # the worker process's module does read them: the trap must catch it
except AssertionError:
    trapped = True
else:
    trapped = False
print(json.dumps({"imported": imported, "trapped": trapped}))
"""


def test_no_library_module_reads_the_global_settings_when_imported() -> None:
    """A fresh interpreter, so every module is really imported (in this one most are already loaded)."""
    code = IMPORT_EVERY_LIBRARY_MODULE % {"packages": LIBRARY_PACKAGES, "workers": WORKER_LIBRARY_MODULES}
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trapped"], "importing workers.app should have hit the trap: the test is not armed"
    imported = set(result["imported"])
    assert {"curation.scoring", "curation.segmenters.sam", "labeling.push", "labeling.webhook", "training.stages",
            "training.evaluate", "db.engine", "db.migrate", *WORKER_LIBRARY_MODULES} <= imported


def library_files() -> list[Path]:
    files = [path for package in LIBRARY_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    return files + [ROOT / (name.replace(".", "/") + ".py") for name in WORKER_LIBRARY_MODULES]


def names_get_settings(tree: ast.AST) -> list[int]:
    """Lines that call, import or otherwise name get_settings (also `settings_module.get_settings`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "get_settings":
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "get_settings":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and any(alias.name == "get_settings" for alias in node.names):
            lines.append(node.lineno)
    return lines


def test_only_the_cli_and_the_task_code_read_the_global_settings() -> None:
    """Not at import, nor in any function: a library that needs a setting takes it from its caller."""
    offenders = {}
    for path in library_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative in CLI_ONLY:
            continue
        lines = names_get_settings(ast.parse(path.read_text(encoding="utf-8"), filename=relative))
        if lines:
            offenders[relative] = lines
    assert offenders == {}, f"get_settings() in library code (file: lines): {offenders}"
    assert names_get_settings(ast.parse((ROOT / "workers/tasks.py").read_text())), "the check finds nothing"


@contextmanager
def global_settings_refused(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a library read the process's global settings")

    with monkeypatch.context() as patch:
        patch.setattr("geocurate.settings.get_settings", refuse)
        yield


def count(url: str, model, *where) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


@pytest.fixture
def explicit_settings(tmp_path: Path) -> Settings:
    """Settings for a store that is not the default one (the global settings here name ./geocurate.db)."""
    url = f"sqlite:///{tmp_path / 'explicit' / 'store.db'}"
    (tmp_path / "explicit").mkdir()
    upgrade(url)
    return Settings(
        database_url=url, data_dir=tmp_path / "explicit" / "data", adapters_dir=tmp_path / "explicit" / "adapters",
        demo_models=True, segmenter="maskformer", device="cpu", score_dtype="float32",
        review_band_low=0.0, review_band_high=1.01,  # every score is routed, so routing has rows to write
    )


def test_a_stage_and_a_store_operation_use_the_given_store(explicit_settings: Settings, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from curation.ingest import ImageLimits, ingest_folder
    from curation.score_store import score_images
    from curation.scoring import Scorer
    from geocurate.export_format import PROMPT, location_file
    from labeling.routing import route_for_review
    from tests.scoring_images import write_images
    from tests.test_training import TINY
    from tests.training_exports import build_export
    from training.evaluate import evaluate_export
    from training.stages import train_stage

    torch.set_num_threads(2)
    settings, url = explicit_settings, explicit_settings.database_url
    write_images(tmp_path / "images", 3)
    export = build_export(tmp_path / "export", train=4, val=1, test=2, reasoning=0)
    with open(location_file(export, "train"), "a", encoding="utf-8") as handle:  # quarantined by the stage
        handle.write(json.dumps({"id": "gone", "image": "images/missing.png", "prompt": PROMPT,
                                 "answer": {"country": "Poland", "city": None, "reasons": ""}}) + "\n")

    with global_settings_refused(monkeypatch):
        with session_scope(url) as session:
            ingested, _ = ingest_folder(session, tmp_path / "images", limits=ImageLimits.from_settings(settings))
            image_ids = list(session.scalars(select(Image.id)))
        scorer = Scorer.from_settings(settings)
        with session_scope(url) as session:
            scored = score_images(session, scorer, image_ids)
            routed = route_for_review(session, scorer.version, settings)
        stage = train_stage(export, "location", settings, config=TINY.replace(max_steps=2, save_steps=1))
        metrics = evaluate_export(export, settings=settings)

    assert ingested.added == scored.scored == routed.images_queued == 3
    assert count(url, Image) == count(url, Score, Score.scorer_version == scorer.version) == 3
    assert count(url, ReviewTask, ReviewTask.item_kind == "image") == 3
    with session_scope(url) as session:
        location, evaluation = session.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
        reasons = list(session.scalars(select(Quarantine.reason).where(Quarantine.item_kind == "training_example")))
    assert (location.id, location.stage, location.status) == (stage.run_id, "location", "done")
    assert location.checkpoint_path.endswith("checkpoint-2"), "recorded by the Trainer callback, in this store"
    assert (evaluation.id, evaluation.stage, evaluation.metrics["n"]) == (metrics["run_id"], "eval", 2)
    assert location.metrics["test"]["n"] == 2, "the evaluation is attached to the run in the same store"
    assert reasons == ["unreadable_image"]
    assert not (tmp_path / "geocurate.db").exists(), "the default store of the global settings was never opened"
