"""Export records and the store queries behind them: every export is a row with its parameters, counts and content
hash, and its items say which image (and clue) went into which split, so a trained model traces back to its data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timezone
from itertools import islice
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Select, Table, Text, and_, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Clue, CluePair, Export, ExportItem, Image, Score, ScorerVersion, utcnow
from db.upsert import insert_ignore

STREAM_ROWS = 5000  # rows fetched per round trip from a server-side cursor
GROUP_TABLE = "export_groups"


def stream(session: Session, stmt: Select, rows: int = STREAM_ROWS) -> Iterator[Any]:
    """Rows one by one from a server-side cursor (PostgreSQL) or SQLite's lazy cursor: memory stays constant
    whatever the table size."""
    yield from session.execute(stmt.execution_options(yield_per=rows, stream_results=True))


def stream_rows(session: Session, stmt: Select, rows: int = STREAM_ROWS) -> Iterator[Any]:
    """`stream` on the session's connection rather than through the ORM: plain Core rows (tuple-like), several
    times cheaper per row when a million of them pass."""
    result = session.connection().execute(stmt.execution_options(yield_per=rows, stream_results=True))
    for partition in result.partitions():
        yield from partition


def append_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                chunk_rows: int = 20_000) -> None:
    """Append rows known to be new (no conflict handling): PostgreSQL's COPY, else executemany. Rows are taken a
    chunk at a time, so `rows` may itself stream from a cursor of the same connection (a COPY in progress holds
    the connection)."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    column_list = ", ".join(f'"{c}"' for c in columns)
    rows = iter(rows)
    while chunk := list(islice(rows, chunk_rows)):
        if not postgresql:
            session.execute(table.insert(), [dict(zip(columns, row)) for row in chunk])
            continue
        cursor = session.connection().connection.driver_connection.cursor()
        try:
            with cursor.copy(f'COPY "{table.name}" ({column_list}) FROM STDIN') as copy:
                for row in chunk:
                    copy.write_row(row)
        finally:
            cursor.close()


def latest_scorer_version(session: Session) -> str | None:
    """The scorer version registered last, else the one with most scores (scores written without registration)."""
    version = session.scalar(select(ScorerVersion.version).order_by(ScorerVersion.created_at.desc()).limit(1))
    if version:
        return version
    return session.scalar(
        select(Score.scorer_version).group_by(Score.scorer_version)
        .order_by(func.count().desc(), Score.scorer_version).limit(1)
    )


def export_by_id_or_name(session: Session, reference: int | str) -> Export | None:
    """The export a user or a run names: an id when it is one of an export (`geocurate train 3`), else a name."""
    reference = str(reference)
    if reference.isdigit():
        found = session.get(Export, int(reference))
        if found is not None:
            return found
    return session.scalars(select(Export).where(Export.name == reference)).first()


class ExportBusy(RuntimeError):
    """Another live process is building an export of this name."""


def begin_export(session: Session, name: str, scorer_version: str, threshold: float, params: dict[str, Any],
                 path: str, builder: str, stale_after: float, is_dead: Callable[[str | None], bool]) -> int:
    """Create the export row in state "building", held by `builder`. A name that failed, or whose builder died
    (no heartbeat for `stale_after` seconds, or a process of this host that is gone), is built again; a name
    being built by a live process is refused (ExportBusy), so a second `export NAME` never destroys the first's
    work; a finished one is never reused (FileExistsError: exports are immutable)."""
    existing = session.scalar(select(Export).where(Export.name == name).with_for_update())
    now = utcnow()
    if existing is not None:
        if existing.status == "done":
            raise FileExistsError(name)
        single_host = session.get_bind().dialect.name == "sqlite"
        if existing.status == "building" and not _abandoned(existing, now, stale_after, is_dead, single_host):
            raise ExportBusy(f"export {name!r} is being built by {existing.builder or 'another process'} (last "
                             f"heartbeat {_ago(existing.heartbeat_at or existing.created_at, now)}); wait for it to "
                             "finish, or choose another name")
        session.query(ExportItem).filter(ExportItem.export_id == existing.id).delete()
        existing.scorer_version, existing.threshold, existing.params = scorer_version, threshold, params
        existing.path, existing.status, existing.counts, existing.content_hash = path, "building", {}, None
        existing.created_at, existing.builder, existing.heartbeat_at = now, builder, now
        session.flush()
        return existing.id
    export = Export(name=name, scorer_version=scorer_version, threshold=threshold, params=params, path=path,
                    status="building", counts={}, created_at=now, builder=builder, heartbeat_at=now)
    session.add(export)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:  # a concurrent build inserted the same name first
        raise ExportBusy(f"export {name!r} is being built by another process; choose another name") from None
    return export.id


def _abandoned(export: Export, now, stale_after: float, is_dead: Callable[[str | None], bool],
               single_host: bool) -> bool:
    """SQLite is one host's file, and its single writer cannot take a heartbeat while the build writes: there,
    only a builder process that is gone makes a build abandoned."""
    if is_dead(export.builder) or single_host:
        return is_dead(export.builder)
    beat = export.heartbeat_at or export.created_at
    if beat.tzinfo is None:  # SQLite returns naive UTC
        beat = beat.replace(tzinfo=timezone.utc)
    return (now - beat).total_seconds() > stale_after


def _ago(moment, now) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return f"{max(0, int((now - moment).total_seconds()))} s ago"


def export_heartbeat(session: Session, export_id: int, builder: str) -> None:
    session.execute(update(Export).where(Export.id == export_id, Export.builder == builder,
                                         Export.status == "building").values(heartbeat_at=utcnow()))


def finish_export(session: Session, export_id: int, counts: dict[str, Any], content_hash: str) -> None:
    export = session.get(Export, export_id)
    export.counts, export.content_hash, export.status = counts, content_hash, "done"


def fail_export(session: Session, export_id: int) -> None:
    export = session.get(Export, export_id)
    if export is not None:
        export.status = "failed"


def add_export_items(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    return insert_ignore(session, ExportItem.__table__, rows, conflict=["export_id", "dataset", "image_id", "clue_id"])


def create_group_table(session: Session) -> Table:
    """A per-connection temporary table image → place key. Keys are computed in Python (normalised city names,
    H3 cells), and the table lets the database sort the selection by them so duplicates and splits are handled
    one place at a time without holding the export in memory."""
    table = Table(
        GROUP_TABLE, MetaData(),
        Column("image_id", Integer, primary_key=True, autoincrement=False),
        Column("group_key", Text, nullable=False),  # a city name of any length makes a key
        prefixes=["TEMPORARY"],
    )
    connection = session.connection()
    table.drop(connection, checkfirst=True)
    table.create(connection)
    return table


def drop_group_table(session: Session, table: Table) -> None:
    table.drop(session.connection(), checkfirst=True)


def add_place_keys(session: Session, table: Table, rows: Iterable[tuple[int, str]]) -> None:
    """(image id, place key) pairs; each image once (the selection has one row per image)."""
    append_rows(session, table, ("image_id", "group_key"), rows)


ITEM_COLUMNS = ("export_id", "dataset", "split", "image_id")


class ItemAppender:
    """Appends (export id, dataset, split, image id) rows of a new export (nothing to conflict with: begin_export
    cleared a reused name's items).

    On PostgreSQL the rows go through one COPY on a second connection, kept open for the whole pass and fed by a
    queue: the server inserts and indexes them (~7 µs a row, 4 s at 600k items) while the exporter goes on,
    instead of the exporter waiting for every chunk. That connection commits in
    `finish`, just before the export's own transaction; if the latter then fails, the export is marked failed and
    a rebuild under the name clears the items (begin_export). Elsewhere rows are inserted in the session.
    """

    def __init__(self, session: Session):
        self.session, self._raw, self._copy_context, self._copy = session, None, None, None
        if session.get_bind().dialect.name == "postgresql":
            from psycopg.copy import QueuedLibpqWriter

            self._raw = session.get_bind().raw_connection()
            cursor = self._raw.driver_connection.cursor()
            self._copy_context = cursor.copy(f"COPY export_items ({', '.join(ITEM_COLUMNS)}) FROM STDIN",
                                             writer=QueuedLibpqWriter(cursor))
            self._copy = self._copy_context.__enter__()

    def add(self, rows: list[tuple[int, str, str, int]]) -> None:
        if self._copy is None:
            append_rows(self.session, ExportItem.__table__, ITEM_COLUMNS, rows)
            return
        write_row = self._copy.write_row
        for row in rows:
            write_row(row)

    def finish(self) -> None:
        if self._raw is not None:
            self._copy_context.__exit__(None, None, None)
            self._raw.commit()
            self._close()

    def abort(self) -> None:
        if self._raw is not None:
            try:
                self._copy_context.__exit__(RuntimeError, RuntimeError("export failed"), None)
            except Exception:  # noqa: BLE001 - the COPY is being cancelled; the rollback below is what matters
                pass
            self._close()

    def _close(self) -> None:
        raw, self._raw = self._raw, None
        try:
            raw.rollback()
        finally:
            raw.close()


def analyze(session: Session, table: Table) -> None:
    """Statistics for a filled temporary table (autovacuum never sees one), so the join that sorts by place
    is planned on real row counts."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f'ANALYZE "{table.name}"'))


def group_sizes(session: Session, table: Table) -> dict[str, int]:
    rows = session.execute(select(table.c.group_key, func.count()).group_by(table.c.group_key))
    return {key: int(n) for key, n in rows}


def accepted_clue_pairs() -> Select:
    """Accepted clues with their paired images, in a stable order: the reasoning stage's examples."""
    return (
        select(Clue.id.label("clue_id"), Clue.sha256.label("clue_sha256"), Clue.text,
               Clue.country.label("clue_country"),
               Image.id, Image.sha256, Image.uri, Image.lat, Image.lon, Image.country_code, Image.city)
        .join(CluePair, CluePair.clue_id == Clue.id)
        .join(Image, and_(Image.id == CluePair.image_id))
        .where(Clue.status == "accepted", Clue.country.is_not(None))
        .order_by(Clue.sha256, Image.sha256)
    )
