"""The store: migrations create everything, re-running writes never duplicates rows, errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import func, inspect, select

from db import models as m
from db.engine import StoreUnavailable, check_connection, get_engine, session_scope
from db.images import add_images, ids_by_sha
from db.quarantine import quarantine
from db.scores import add_scores

EXPECTED_TABLES = {
    "images", "scores", "scorer_versions", "image_embeddings", "clues", "clue_pairs", "review_tasks", "annotations",
    "quarantine", "exports", "export_items", "training_runs", "runs", "batches", "task_failures",
}


def image_row(n: int) -> dict:
    return dict(sha256=f"{n:064x}", uri=f"/img/{n}.jpg", width=640, height=480, lat=50.0, lon=19.9,
                country_code="PL", city="Kraków", source="test")


def test_upgrade_creates_every_table(store_url):
    tables = set(inspect(get_engine(store_url)).get_table_names())
    assert EXPECTED_TABLES <= tables


def test_migrations_match_models(store_url):
    """A model changed without its migration would make `alembic upgrade head` build a different store."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with get_engine(store_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), m.Base.metadata)
    assert diff == []


def test_same_image_twice_is_one_row(store_url):
    with session_scope(store_url) as s:
        assert add_images(s, [image_row(1)]) == 1
    with session_scope(store_url) as s:
        assert add_images(s, [image_row(1), image_row(1), image_row(2)]) == 1
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(m.Image)) == 2


def test_same_image_same_scorer_version_is_one_score(store_url):
    with session_scope(store_url) as s:
        add_images(s, [image_row(1)])
        image_id = ids_by_sha(s, [image_row(1)["sha256"]])[image_row(1)["sha256"]]
    score = dict(image_id=image_id, scorer_version="v1", locatability=0.5, class_ratios={"6": 0.5}, decision="keep")
    with session_scope(store_url) as s:
        assert add_scores(s, [score]) == 1
    with session_scope(store_url) as s:
        assert add_scores(s, [{**score, "locatability": 0.9}]) == 0
        assert add_scores(s, [{**score, "scorer_version": "v2"}]) == 1
    with session_scope(store_url) as s:
        rows = s.execute(select(m.Score.scorer_version, m.Score.locatability).order_by(m.Score.scorer_version)).all()
    assert rows == [("v1", 0.5), ("v2", 0.5)]


def test_quarantine_records_once(store_url):
    with session_scope(store_url) as s:
        assert quarantine(s, "image", "/x/broken.jpg", "not an image") is True
        assert quarantine(s, "image", "/x/broken.jpg", "not an image") is False
        assert quarantine(s, "image", "/x/broken.jpg", "too small") is True
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(m.Quarantine)) == 2


def test_unreachable_store_is_one_line_with_masked_password():
    url = "postgresql+psycopg://bob:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(StoreUnavailable) as info:
        check_connection(url)
    message = str(info.value)
    assert "127.0.0.1:1/nowhere" in message and "hunter2" not in message and "\n" not in message


def test_cli_upgrade_and_status(store_url, monkeypatch):
    env = {"GEOCURATE_DATABASE_URL": store_url}
    upgrade = run_cli(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stderr
    with session_scope(store_url) as s:
        add_images(s, [image_row(1), image_row(2)])
    status = run_cli(["status"], env)
    assert status.returncode == 0, status.stderr
    assert "images" in status.stdout and "ingested" in status.stdout and "2" in status.stdout


def test_cli_bad_url_is_one_line_error():
    result = run_cli(["status"], {"GEOCURATE_DATABASE_URL": "postgresql+psycopg://u:secret@127.0.0.1:1/x"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot reach the store at")
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GEOCURATE_")} | env
    return subprocess.run([sys.executable, "-m", "geocurate.cli", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_bulk_insert_counts_only_new_rows(store_url):
    """1,200 rows go through the bulk path (COPY on PostgreSQL); duplicates inside and across calls are skipped."""
    batch = [image_row(n) for n in range(1000)] + [image_row(n) for n in range(200)]
    with session_scope(store_url) as s:
        assert add_images(s, batch) == 1000
    with session_scope(store_url) as s:
        assert add_images(s, [image_row(n) for n in range(900, 1600)]) == 600
        assert s.scalar(select(func.count()).select_from(m.Image)) == 1600
