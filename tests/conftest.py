"""Shared fixtures: fresh stores on SQLite and on the machine's PostgreSQL, isolated settings per test."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test` runs -n 2) test processes share the cores: each process and every process it starts
# (the demo, `geocurate` commands, Celery workers) gets one math thread, and idle OpenMP threads sleep instead of
# spinning, so two test processes never fight over the cores with 2 spinning threads each (that made the demo 8x
# slower). Set before torch is imported; a value given from outside wins. Results do not depend on the thread count
# (tests/test_scoring_golden.py checks the scores are bit-identical with 1 and 2 threads).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


# --- parallel runs (pytest-xdist; `make test` runs -n 2 --dist loadgroup) ------------------------------------------
# Tests that share something expensive or timing-sensitive run on one xdist worker, as one group:
# - "labelstudio": every test using the session's Label Studio server (tests/labelstudio_server.py), so one server
#   is started per run, not one per worker;
# - "celery": every test using real Celery workers and their store (test_workers_celery.worker_env), so those
#   workers start once per module and their timing (lease expiry, recovery bounds) is measured beside one other test
#   process at most, never beside a second set of workers;
# - one group per module for the tests sharing a module-scoped fixture (one demo run, one scoring of the golden
#   sample, one SAM scorer...), so it is built once, not once per worker.
# Everything else is spread test by test. Each worker has its own process, temp dir (tmp_path_factory), settings,
# stores (a fresh database or file per test) and Redis key prefix (uuid), so nothing else needs to be serialised.
XDIST_GROUPS = {"label_studio_server": "labelstudio", "worker_env": "celery"}
# The longest work goes first (a group or a test that took long in the last run), so no worker is left with a
# minute of work when the others are done. Durations of the last runs are kept in pytest's cache by the controller
# and handed to the workers, so that every worker orders the tests the same way.
DURATIONS_KEY = "geocurate/durations"
UNKNOWN_DURATION = 1.0  # seconds: a new test
_durations: dict[str, float] = {}
_this_run: dict[str, float] = {}


def base_nodeid(nodeid: str) -> str:
    """The node id without xdist's `@group` suffix (xdist's own rule: an `@` after the last `]`)."""
    return nodeid.rsplit("@", 1)[0] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid


def group_of(item: pytest.Item) -> str | None:
    names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                    for mark in item.iter_markers("xdist_group")})
    return "_".join(names) or None


def _uses_module_fixture(item: pytest.Item) -> bool:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(fixturedefs and str(fixturedefs[-1].scope) in {"module", "class", "package"}
               for fixturedefs in defs.values())


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    for item in items:  # before xdist's own hook reads the marks
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        group = next((name for fixture, name in XDIST_GROUPS.items() if fixture in fixtures), None)
        if group is None and _uses_module_fixture(item):
            group = f"module-{item.path.stem}"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    if XDIST_WORKER and getattr(config.option, "loadgroup", False):
        longest_first(items, getattr(config, "workerinput", {}).get("geocurate_durations", {}))
        carry_xdist_groups(items)
    return result


def longest_first(items: list[pytest.Item], durations: dict[str, float]) -> None:
    """Order the work units (a group, or a test of none) by their duration in the last runs, longest first; a unit's
    tests keep their order. Used with --no-loadscope-reorder, which hands units out in this order."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(group_of(item) or item.nodeid, []).append(item)

    def seconds(unit: list[pytest.Item]) -> float:
        return sum(durations.get(base_nodeid(item.nodeid), UNKNOWN_DURATION) for item in unit)

    items[:] = [item for unit in sorted(units.values(), key=seconds, reverse=True) for item in unit]


def carry_xdist_groups(items: list[pytest.Item]) -> None:
    """xdist tells its scheduler a test's group by a suffix on the node id (`...::test@group`), written to the
    item's `_nodeid`; pytest 9.2 keeps node ids in `_id` (a NodeId), so the suffix is lost and groups are silently
    split across workers (pytest-dev/pytest-xdist#1386, fix pending in #1388). Write it where pytest now keeps it, and
    stop the run if no group can be carried, rather than start a second Label Studio or set of Celery workers."""
    for item in items:
        group = group_of(item)
        if group is None or item.nodeid.endswith(f"@{group}"):
            continue  # no group, or xdist's own suffix took effect
        if hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(f"{item.nodeid}@{group}")
        if not item.nodeid.endswith(f"@{group}"):
            raise pytest.UsageError(f"cannot tell pytest-xdist the group of {item.nodeid} ({group}): run without "
                                    "-n, or with a pytest and pytest-xdist whose --dist loadgroup works")


def pytest_configure(config: pytest.Config) -> None:
    if not XDIST_WORKER and getattr(config, "cache", None) is not None:
        _durations.update(config.cache.get(DURATIONS_KEY, {}))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist's controller starting a worker: the last runs' durations go with it."""
    node.workerinput["geocurate_durations"] = dict(_durations)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not XDIST_WORKER:
        nodeid = base_nodeid(report.nodeid)
        _this_run[nodeid] = _this_run.get(nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not XDIST_WORKER and _this_run and getattr(session.config, "cache", None) is not None:
        session.config.cache.set(DURATIONS_KEY, {**_durations, **{k: round(v, 2) for k, v in _this_run.items()}})


@pytest.fixture(autouse=True)
def one_torch_thread_per_xdist_worker() -> None:
    """Test modules set torch's thread count when imported (all of them are imported by every worker at collection):
    under xdist each test starts from the worker's one thread again; a test may still raise it for itself."""
    torch = sys.modules.get("torch") if XDIST_WORKER else None
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and threads.isdigit() and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


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
