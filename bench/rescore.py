"""Rescoring stored class ratios under new weights on PostgreSQL: the set-based production path
(`curation.score_store.rescore_from_ratios`, one INSERT ... SELECT in the database) against the straightforward
route (read rows, compute `locatability()` in Python, bulk-insert the new rows), measured in this run.

    .venv/bin/python bench/rescore.py [--rows 1000000] [--baseline-rows 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select, text  # noqa: E402

from bench.db_ingest import drop, fresh_database  # noqa: E402
from curation.locatability import REFERENCE_WEIGHTS, locatability  # noqa: E402
from curation.score_store import rescore_from_ratios  # noqa: E402
from curation.scoring import decide, version_of  # noqa: E402
from db.engine import session_scope  # noqa: E402
from db.models import Score  # noqa: E402
from db.scores import add_scores, register_scorer_version  # noqa: E402
from geocurate.settings import Settings  # noqa: E402

SOURCE_PARAMS = {"segmenter": "sam", "bench": True, "threshold": 0.4, "review_band": [0.3, 0.5]}
NEW_WEIGHTS = [min(1.0, w * 1.1 + 0.01) for w in REFERENCE_WEIGHTS]


def fill(url: str, rows: int) -> str:
    """`rows` images with one score each: 12 classes per image, ratios summing to at most 0.8."""
    version = version_of(SOURCE_PARAMS)
    with session_scope(url) as session:
        register_scorer_version(session, version, SOURCE_PARAMS)
        session.execute(text(
            "INSERT INTO images (id, sha256, uri, status, ingested_at) "
            "SELECT g, lpad(to_hex(g), 64, '0'), '/bench/' || g || '.jpg', 'scored', now() "
            "FROM generate_series(1, :n) AS g"), {"n": rows})
        session.execute(text(
            "INSERT INTO scores (image_id, scorer_version, locatability, class_ratios, decision, computed_at) "
            "SELECT g, :v, 0.0, (SELECT json_object_agg(((g * 7 + k * 13) % 150)::text, ((g + k) % 10 + 1) / 150.0) "
            "                    FROM generate_series(1, 12) AS k), 'drop', now() "
            "FROM generate_series(1, :n) AS g"), {"n": rows, "v": version})
    with session_scope(url) as session:
        session.execute(text("ANALYZE"))
    return version


def python_rescore(url: str, source: str, limit: int, settings: Settings) -> float:
    """Rows per second of the straightforward route on the first `limit` rows."""
    start = time.perf_counter()
    with session_scope(url) as session:
        rows = session.execute(select(Score.image_id, Score.class_ratios).where(Score.scorer_version == source)
                               .order_by(Score.image_id).limit(limit)).all()
        new_rows = []
        for image_id, ratios in rows:
            value = locatability(ratios, NEW_WEIGHTS)
            new_rows.append(dict(image_id=image_id, scorer_version="python-baseline", locatability=value,
                                 class_ratios=ratios, decision=decide(value, settings)))
        add_scores(session, new_rows)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="connections (image-id ranges)")
    args = parser.parse_args()
    settings = Settings()

    url = fresh_database()
    try:
        start = time.perf_counter()
        source = fill(url, args.rows)
        print(f"filled {args.rows:,} images + scores in {time.perf_counter() - start:.1f} s", flush=True)
        baseline = python_rescore(url, source, args.baseline_rows, settings)
        print(f"python route (read, locatability(), bulk insert): {baseline:,.0f} rows/s "
              f"({args.baseline_rows:,} rows)", flush=True)

        start = time.perf_counter()
        with session_scope(url) as session:
            result = rescore_from_ratios(session, NEW_WEIGHTS, source, parallel=args.parallel)
        seconds = time.perf_counter() - start

        with session_scope(url) as session:
            sample = session.execute(select(Score.class_ratios, Score.locatability, Score.decision)
                                     .where(Score.scorer_version == result.scorer_version)
                                     .order_by(Score.image_id).limit(1000)).all()
            count = session.scalar(select(func.count()).select_from(Score)
                                   .where(Score.scorer_version == result.scorer_version))
        worst = max(abs(locatability(r, NEW_WEIGHTS) - v) for r, v, _ in sample)
        wrong = sum(decide(v, settings) != d for _, v, d in sample)
        assert result.rows == count == args.rows, (result.rows, count)
        assert worst < 1e-9 and wrong == 0, (worst, wrong)
        print(f"set-based rescore_from_ratios (parallel={args.parallel}): {args.rows:,} rows in {seconds:.1f} s "
              f"({args.rows / seconds:,.0f} rows/s); max |difference| vs Python on 1,000 rows {worst:.1e}",
              flush=True)
        print(f"ratio set-based/python: {args.rows / seconds / baseline:.1f}x", flush=True)

        start = time.perf_counter()  # the floor: the same rows copied unchanged, nothing computed
        with session_scope(url) as session:
            session.execute(text(
                "INSERT INTO scores (image_id, scorer_version, locatability, class_ratios, decision, computed_at) "
                "SELECT image_id, 'plain-copy', locatability, class_ratios, decision, computed_at "
                "FROM scores WHERE scorer_version = :v"), {"v": source})
        print(f"floor, one INSERT ... SELECT copying the same rows unchanged (1 connection): "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    finally:
        drop(url)


if __name__ == "__main__":
    main()
