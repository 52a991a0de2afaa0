"""Shared fixtures: fresh stores on SQLite and on the machine's PostgreSQL, isolated settings per test."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
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


ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "db" / "migrations"
# pg_advisory_lock key held while a template database is built, so parallel sessions (pytest-xdist workers, other
# checkouts on the same server) build it once and never clone a half-migrated one.
TEMPLATE_LOCK_KEY = 0x6765_6F63  # "geoc"


# What a migrated store is made by, besides the libraries: a template built from the same inputs is the same store.
MIGRATION_INPUTS = [MIGRATIONS, ROOT / "db" / "migrate.py", ROOT / "db" / "engine.py", ROOT / "db" / "models.py"]


@functools.cache
def migration_hash(server: str = "") -> str:
    """A key for a migrated store: every file of db/migrations, the code that runs them (db.migrate, db.engine,
    db.models), the Alembic and SQLAlchemy versions and the database server's version. A template store is reused,
    across sessions too, only while this key stays the same, so reusing it gives exactly what migrating would."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"alembic {version('alembic')} sqlalchemy {version('sqlalchemy')} {server}".encode())
    for root in MIGRATION_INPUTS:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".mako", ".ini"}:
                digest.update(b"\0" + path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def admin_engine():
    from sqlalchemy import create_engine

    return create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")


@functools.cache
def pg_template() -> str:
    """The name of a PostgreSQL database migrated to head, to clone stores from: built once (under an advisory lock,
    under a temporary name, renamed when complete) and kept between sessions while migration_hash() matches. Nobody
    may connect to it (ALLOW_CONNECTIONS false): CREATE DATABASE ... TEMPLATE fails while another session is
    connected to the template."""
    from sqlalchemy import text

    from db.engine import get_engine
    from db.migrate import upgrade

    admin = admin_engine()
    try:
        conn = admin.connect()
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        admin.dispose()
        unavailable(f"PostgreSQL at {PG_SERVER}", str(exc).splitlines()[0])
    try:
        name = f"geocurate_template_{migration_hash(conn.scalar(text('SHOW server_version')))}"
        building = f"{name}_build"
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": TEMPLATE_LOCK_KEY})
        if conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}) is None:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)'))  # left by a crashed build
            conn.execute(text(f'CREATE DATABASE "{building}"'))
            url = f"{PG_SERVER}/{building}"
            try:
                upgrade(url)
            finally:
                get_engine(url).dispose()
            conn.execute(text(f'ALTER DATABASE "{building}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{name}"'))
    finally:
        with contextlib.suppress(Exception):
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TEMPLATE_LOCK_KEY})
        conn.close()
        admin.dispose()  # the session's end would release the lock too
    return name


def create_pg_database(prefix: str = "geocurate_test", migrated: bool = False) -> str:
    """A new database on the test server: empty, or (migrated=True) a clone of pg_template(), which is what a
    migration to head gives, in a quarter of the time."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    template = pg_template() if migrated else None
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    create = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
    admin = admin_engine()
    try:
        for attempt in range(20):
            try:
                with admin.connect() as conn:
                    conn.execute(text(create))
                break
            except OperationalError as exc:  # a stray connection to the template: PostgreSQL waited 5 s for it
                if "being accessed by other users" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        unavailable(f"PostgreSQL at {PG_SERVER}", str(exc).splitlines()[0])
    finally:
        admin.dispose()
    return f"{PG_SERVER}/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import text

    from db.engine import dispose_all

    dispose_all()
    name = url.rsplit("/", 1)[1]
    admin = admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _sqlite_template_is_whole(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    except sqlite3.Error:
        return False


@functools.cache
def sqlite_template() -> Path:
    """A SQLite file migrated to head, to copy stores from; kept in the temp dir between sessions while
    migration_hash() matches. Built under a private name and renamed into place, so parallel sessions never copy a
    half-written one (the last of two builders to finish replaces an identical file). Kept in rollback-journal mode
    with nothing outside the file; a store copied from it turns to WAL on its first connection (db.engine), as a
    freshly migrated one does."""
    from db.engine import get_engine
    from db.migrate import upgrade

    path = Path(tempfile.gettempdir()) / f"geocurate-sqlite-template-{migration_hash(sqlite3.sqlite_version)}.db"
    if path.is_file() and _sqlite_template_is_whole(path):
        return path
    staging = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    url = f"sqlite:///{staging}"
    try:
        upgrade(url)
        get_engine(url).dispose()
        with contextlib.closing(sqlite3.connect(staging)) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")  # checkpoints the WAL into the file and removes it
        os.replace(staging, path)
    finally:
        for leftover in (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm")):
            leftover.unlink(missing_ok=True)
    return path


def create_sqlite_store(path: Path) -> str:
    """A migrated SQLite store at `path`: a copy of sqlite_template()."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sqlite_template(), path)
    return f"sqlite:///{path}"


def make_store(backend: str, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty store: a copy of the SQLite template file or a clone of the PostgreSQL template database
    (the migration itself runs once per migration_hash(), not once per test)."""
    from db.engine import dispose_all

    url = create_sqlite_store(tmp_path / "store.db") if backend == "sqlite" else create_pg_database(migrated=True)
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
