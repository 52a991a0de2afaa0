"""Score rows: one per (image, scorer_version), so a re-run never scores twice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, and_, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from db.models import Image, Score, ScorerVersion, utcnow
from db.upsert import insert_ignore


def add_scores(session: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Insert scores; an (image, scorer_version) pair already scored keeps its first row. Returns rows inserted."""
    now = utcnow()
    return insert_ignore(
        session, Score.__table__, ({"computed_at": now, **row} for row in rows), conflict=["image_id", "scorer_version"]
    )


def register_scorer_version(session: Session, version: str, params: dict[str, Any],
                            weights: Sequence[float] | None = None) -> None:
    """Record what `version` stands for, once; the weights themselves fill a row registered without them."""
    values = [float(w) for w in weights] if weights is not None else None
    insert_ignore(session, ScorerVersion.__table__,
                  [dict(version=version, params=params, weights=values, created_at=utcnow())], conflict=["version"])
    if values is not None:
        session.execute(update(ScorerVersion).where(ScorerVersion.version == version, ScorerVersion.weights.is_(None))
                        .values(weights=values))


def scorer_weights(session: Session, version: str) -> list[float] | None:
    """The 150 class weights stored with a version (None for versions registered without them)."""
    return session.scalar(select(ScorerVersion.weights).where(ScorerVersion.version == version))


def version_table(session: Session) -> list[tuple[str, datetime, dict[str, Any], list[float] | None, int]]:
    """(version, created_at, params, weights, number of score rows) of every registered version, newest first;
    versions whose scores were written without registration come last with empty params."""
    counts = dict(session.execute(select(Score.scorer_version, func.count())
                                  .group_by(Score.scorer_version)).tuples().all())
    rows = session.execute(select(ScorerVersion.version, ScorerVersion.created_at, ScorerVersion.params,
                                  ScorerVersion.weights)
                           .order_by(ScorerVersion.created_at.desc(), ScorerVersion.version)).tuples().all()
    table = [(v, created, params, weights, counts.pop(v, 0)) for v, created, params, weights in rows]
    return table + [(v, None, {}, None, n) for v, n in sorted(counts.items())]


def scorer_params(session: Session, version: str) -> dict[str, Any] | None:
    return session.scalar(select(ScorerVersion.params).where(ScorerVersion.version == version))


def scorer_versions(session: Session) -> list[tuple[str, dict[str, Any]]]:
    """(version, params) of every registered scorer, newest first."""
    rows = session.execute(select(ScorerVersion.version, ScorerVersion.params)
                           .order_by(ScorerVersion.created_at.desc(), ScorerVersion.version))
    return [(version, params) for version, params in rows]


def scored_image_ids(session: Session, scorer_version: str, image_ids: Iterable[int]) -> set[int]:
    ids = list(image_ids)
    found: set[int] = set()
    for start in range(0, len(ids), 1000):
        found.update(session.scalars(select(Score.image_id).where(
            Score.scorer_version == scorer_version, Score.image_id.in_(ids[start : start + 1000]))))
    return found


def _unscored(scorer_version: str):
    scored = select(Score.id).where(Score.image_id == Image.id, Score.scorer_version == scorer_version)
    return and_(Image.status != "quarantined", ~scored.exists())


def unscored_image_ids(session: Session, scorer_version: str, limit: int | None = None) -> list[int]:
    """Images not quarantined and without a score under this version, oldest first."""
    query = select(Image.id).where(_unscored(scorer_version)).order_by(Image.id)
    return list(session.scalars(query.limit(limit) if limit else query))


def count_unscored_images(session: Session, scorer_version: str) -> int:
    """How many images `unscored_image_ids` would list, counted in the database."""
    return session.scalar(select(func.count()).select_from(Image).where(_unscored(scorer_version))) or 0


def image_id_ranges(session: Session, scorer_version: str, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous image-id ranges covering every score row of a version (equal widths of the id span)."""
    low, high = session.execute(select(func.min(Score.image_id), func.max(Score.image_id))
                                .where(Score.scorer_version == scorer_version)).one()
    if low is None:
        return []
    step = (high - low) // parts + 1
    return [(start, min(high, start + step - 1)) for start in range(low, high + 1, step)]


def _weights_values(weights: Sequence[float]) -> str:
    """Inline VALUES rows: weights are validated finite floats, and repr() round-trips them exactly."""
    return ", ".join(f"({i}, CAST({float(w)!r} AS DOUBLE PRECISION))" for i, w in enumerate(weights))


def insert_rescored(session: Session, source_version: str, target_version: str, weights: Sequence[float],
                    threshold: float, review_low: float, review_high: float,
                    image_ids: tuple[int, int] | None = None) -> int:
    """Copy every score row of `source_version` to `target_version` with locatability recomputed from its stored
    class ratios under `weights`, and the decision under the given threshold and review band. One INSERT ... SELECT
    inside the database: no row travels to Python. Rows already present under the target version are kept.
    `image_ids` = (first, last) restricts it to a range of image ids, so that ranges can run on parallel connections."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":  # an array lookup per class: no join, no row leaves the server
        weight_sql = ("SUM((CAST(:weights AS DOUBLE PRECISION[]))[CAST(j.key AS INTEGER) + 1]"
                      " * CAST(j.value AS DOUBLE PRECISION))")
        source_sql, each = "", "json_each_text"
    elif dialect == "sqlite":
        weight_sql = "SUM(w.weight * CAST(j.value AS DOUBLE PRECISION))"
        source_sql, each = f"WITH w(idx, weight) AS (VALUES {_weights_values(weights)})", "json_each"
    else:
        raise NotImplementedError(f"set-based rescoring is not implemented for {dialect!r}")
    join = "JOIN w ON w.idx = CAST(j.key AS INTEGER)" if dialect == "sqlite" else ""
    statement = text(f"""
        INSERT INTO scores (image_id, scorer_version, locatability, class_ratios, decision, computed_at)
        {source_sql}
        SELECT r.image_id, :target, r.loc, r.class_ratios,
               CASE WHEN r.loc >= :low AND r.loc < :high THEN 'review'
                    WHEN r.loc >= :threshold THEN 'keep' ELSE 'drop' END,
               :now
        FROM (
            SELECT s.image_id, s.class_ratios,
                   COALESCE((SELECT {weight_sql} FROM {each}(s.class_ratios) AS j {join}), 0.0) AS loc
            FROM scores AS s WHERE s.scorer_version = :source AND s.image_id BETWEEN :first AND :last
              AND NOT EXISTS (SELECT 1 FROM scores AS t WHERE t.image_id = s.image_id AND t.scorer_version = :target)
        ) AS r
        WHERE true
        ON CONFLICT (image_id, scorer_version) DO NOTHING
    """).bindparams(bindparam("now", type_=DateTime(timezone=True)))
    first, last = image_ids if image_ids is not None else (-(2**62), 2**62)
    parameters = dict(target=target_version, source=source_version, threshold=threshold, low=review_low,
                      high=review_high, now=utcnow(), first=first, last=last)
    if dialect == "postgresql":
        parameters["weights"] = [float(w) for w in weights]
    result = session.execute(statement, parameters)
    return result.rowcount
