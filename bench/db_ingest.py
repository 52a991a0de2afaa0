"""Bulk image-row insertion on PostgreSQL: the production path (`db.images.add_images`, chunked
INSERT ... ON CONFLICT DO NOTHING) against one row per commit, both measured in this run on fresh databases.

    .venv/bin/python bench/db_ingest.py [--rows 100000] [--baseline-rows 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from db.engine import dispose_all, session_scope  # noqa: E402
from db.images import add_images  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Image  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def rows(n: int, offset: int = 0):
    for i in range(offset, offset + n):
        yield dict(sha256=f"{i:064x}", uri=f"/images/{i}.jpg", width=640, height=480, lat=50.06, lon=19.94,
                   country_code="PL", city="Kraków", source="bench")


def fresh_database() -> str:
    name = f"geocurate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = f"{SERVER}/{name}"
    upgrade(url)
    return url


def drop(url: str) -> None:
    dispose_all()
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    args = parser.parse_args()

    url = fresh_database()
    try:
        start = time.perf_counter()
        for row in rows(args.baseline_rows):
            with session_scope(url) as session:
                add_images(session, [row])
        baseline = args.baseline_rows / (time.perf_counter() - start)
    finally:
        drop(url)

    url = fresh_database()
    try:
        start = time.perf_counter()
        with session_scope(url) as session:
            inserted = add_images(session, rows(args.rows))
        bulk_seconds = time.perf_counter() - start
        with session_scope(url) as session:
            again = add_images(session, rows(args.rows))  # idempotence at scale: nothing new
            stored = session.scalar(select(func.count()).select_from(Image))
    finally:
        drop(url)
    assert inserted == args.rows == stored and again == 0, (inserted, stored, again)
    bulk = args.rows / bulk_seconds
    print(f"one row per commit: {baseline:,.0f} rows/s ({args.baseline_rows:,} rows)")
    print(f"bulk add_images:    {bulk:,.0f} rows/s ({args.rows:,} rows in {bulk_seconds:.2f} s; re-insert added {again})")
    print(f"ratio bulk/baseline: {bulk / baseline:.1f}x")


if __name__ == "__main__":
    main()
