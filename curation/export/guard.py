"""One builder per export name. The name's row says who builds it; a second build of a name being built by a live
process is refused (it would destroy the first's work), and a build whose process is gone, or whose heartbeat
stopped for a lease (PostgreSQL), no longer holds it. Finished names are never built again: exports are immutable."""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy.orm import Session

from curation.export.params import ExportParams
from db import exports as store
from db.engine import session_scope
from db.heartbeat import beating, is_dead_local, worker_id
from geocurate.errors import UserError


def claim(session: Session, params: ExportParams, path: Path) -> tuple[int, str]:
    """The export's row, held by this process: (export id, builder)."""
    builder = worker_id()
    try:
        export_id = store.begin_export(session, params.name, params.scorer_version, params.threshold,
                                       {**params.hashed(), "images": params.images}, str(path.absolute()), builder,
                                       params.lease_seconds, is_dead_local)
    except FileExistsError:
        raise UserError(f"export {params.name!r} already exists; exports are immutable, choose a new name") from None
    except store.ExportBusy as exc:
        raise UserError(str(exc)) from None
    return export_id, builder


def heartbeat(url: str, export_id: int, builder: str, interval: float):
    """Context: while the export builds, its row says it is alive. SQLite's single writer cannot take a heartbeat
    during the build (see db.exports.begin_export): there, only a gone process frees a name."""
    if url.startswith("sqlite"):
        return contextlib.nullcontext()

    def beat() -> None:
        with session_scope(url) as session:
            store.export_heartbeat(session, export_id, builder)

    return beating(beat, interval, f"export-{export_id}")
