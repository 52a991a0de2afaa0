"""Store contents for the labeling tests: scored street views around the review band, and clues in review."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select

from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.models import Clue
from db.scores import add_scores, register_scorer_version
from geocurate.settings import get_settings
from labeling.routing import route_for_review

SCORER = "test-scorer-1"


def write_image(root: Path, name: str, seed: int) -> Path:
    """A small deterministic picture (distinct bytes per seed)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    picture = PILImage.new("RGB", (48, 40), color=(seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    picture.putpixel((0, 0), (seed % 256, seed // 256 % 256, seed // 65536 % 256))  # unique bytes per seed
    picture.save(path)
    return path


def seed_images(url: str, image_root: Path, scores: list[float], country: str | None = "PL",
                first_seed: int = 0) -> list[int]:
    """One image per score (in order), scored by SCORER; returns their ids. Images of different `first_seed`
    differ in content (their sha256), so several calls add distinct images."""
    rows = []
    for i, score in enumerate(scores, start=first_seed):
        path = write_image(image_root, f"street_{i:04d}.png", i)
        rows.append(dict(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), uri=str(path), width=48, height=40,
                         lat=50.06, lon=19.94, country_code=country, city="Kraków", source="test"))
    with session_scope(url) as session:
        register_scorer_version(session, SCORER, {"test": True})
        add_images(session, rows)
        ids = ids_by_sha(session, [r["sha256"] for r in rows])
        ordered = [ids[r["sha256"]] for r in rows]
        add_scores(session, [dict(image_id=image_id, scorer_version=SCORER, locatability=score,
                                  class_ratios={"6": 0.3, "43": 0.05, "2": 0.4},
                                  decision="review" if 0.3 <= score < 0.5 else ("keep" if score >= 0.4 else "drop"))
                             for image_id, score in zip(ordered, scores)])
    return ordered


def seed_clues(url: str, texts: list[str], status: str = "review") -> list[int]:
    with session_scope(url) as session:
        for text in texts:
            start = text.find("Kraków")
            entities = [{"text": "Kraków", "start": start, "end": start + 6, "label": "city"}] if start >= 0 else []
            session.add(Clue(sha256=hashlib.sha256(text.encode()).hexdigest(), text=text, source="test",
                             entities=entities, geo_ok=bool(entities), country="PL" if entities else None,
                             status=status, reason="ambiguous"))
        session.flush()
        return list(session.scalars(select(Clue.id).where(Clue.text.in_(texts)).order_by(Clue.id)))


def route(url: str) -> None:
    with session_scope(url) as session:
        route_for_review(session, SCORER, get_settings())
