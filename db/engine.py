"""Engines and sessions. One engine per URL per process; a broken URL becomes a one-line error, not a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker


class StoreUnavailable(RuntimeError):
    """The database URL is malformed or the server cannot be reached."""


def masked(url: str) -> str:
    """The URL as shown to people: one masking rule for every URL (geocurate.masking), so a password with an
    unencoded `@` or `:`, which SQLAlchemy's parser misreads, is hidden whole."""
    from geocurate.masking import mask_url

    return mask_url(url)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (status, progress bars) never block the writer
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    if url in _ENGINES:
        return _ENGINES[url]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreUnavailable(f"invalid database URL {masked(url)!r}: {exc}") from None
    except ValueError:  # an unencoded '@' or ':' in the password: the parser's message quotes a piece of it
        raise StoreUnavailable(f"invalid database URL {masked(url)}: percent-encode '@', ':' and '/' in the "
                               "user name and password (e.g. %40 for '@')") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    _ENGINES[url] = engine
    return engine


def check_connection(url: str) -> None:
    """Fail early with the URL (password masked) instead of deep inside the first query. An embedded (SQLite)
    store that has no tables yet is created here, so every command works in a fresh folder, not only `run`."""
    reach(url)
    if make_url(url).get_backend_name() == "sqlite" and not inspect(get_engine(url)).has_table("alembic_version"):
        from db.migrate import upgrade

        upgrade(url)


def reach(url: str) -> None:
    """One round trip to the store, or StoreUnavailable naming it."""
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except StoreUnavailable:
        raise
    except (OperationalError, SQLAlchemyError, ModuleNotFoundError) as exc:
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise StoreUnavailable(f"cannot reach the store at {masked(url)}: {reason}") from None


@lru_cache(maxsize=16)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction on the store at `url`: committed when the block ends, rolled back when it raises. The URL is
    always the caller's: a default to the process's settings once let a training stage write to another store than
    the settings it was given named."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Close pooled connections: after a fork in workers, and before a test drops its database."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _sessionmaker.cache_clear()
