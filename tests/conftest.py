"""Shared fixtures: fresh stores on SQLite and on the machine's PostgreSQL, isolated settings per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PG_SERVER = os.environ.get("GEOCURATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(what: str, reason: str) -> None:
    """Under CI a missing service is a failure, never a silent skip; locally it skips with the reason."""
    message = f"{what} is not reachable: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def create_pg_database(prefix: str = "geocurate_test") -> str:
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        unavailable(f"PostgreSQL at {PG_SERVER}", str(exc).splitlines()[0])
    finally:
        admin.dispose()
    return f"{PG_SERVER}/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    from db.engine import dispose_all

    dispose_all()
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_store(backend: str, tmp_path: Path) -> Iterator[str]:
    from db.engine import dispose_all
    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite" else create_pg_database()
    upgrade(url)
    try:
        yield url
    finally:
        if backend == "postgresql":
            drop_pg_database(url)
        else:
            dispose_all()


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test runs in its own directory with no GEOCURATE_* from the outside world."""
    from geocurate.settings import reload_settings

    for key in list(os.environ):
        if key.startswith("GEOCURATE_") and key != "GEOCURATE_TEST_PG":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOCURATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GEOCURATE_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.setenv("GEOCURATE_ADAPTERS_DIR", str(tmp_path / "adapters"))
    reload_settings()
    yield
    reload_settings()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated, empty store; every test using it runs on SQLite and on PostgreSQL."""
    from geocurate.settings import reload_settings

    for url in make_store(request.param, tmp_path):
        monkeypatch.setenv("GEOCURATE_DATABASE_URL", url)
        reload_settings()
        yield url


@pytest.fixture
def sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from geocurate.settings import reload_settings

    for url in make_store("sqlite", tmp_path):
        monkeypatch.setenv("GEOCURATE_DATABASE_URL", url)
        reload_settings()
        yield url


@pytest.fixture
def pg_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from geocurate.settings import reload_settings

    for url in make_store("postgresql", tmp_path):
        monkeypatch.setenv("GEOCURATE_DATABASE_URL", url)
        reload_settings()
        yield url
