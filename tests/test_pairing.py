"""Clues without an image are paired with the most similar stored images of their country (demo CLIP), once."""

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from curation.clip import build_clip
from curation.clues.ingest import clue_sha256
from curation.embeddings import stored_embeddings
from curation.pairing import pair_clues, top_matches
from db.clues import add_clues
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.models import Clue, CluePair, ImageEmbedding


def test_top_matches_keeps_the_best_above_the_minimum():
    texts = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    images = np.array([[0.6, 0.8], [1.0, 0.0], [0.8, 0.6]], np.float32)
    assert top_matches(texts, images, 2, -1.0) == [[(1, 1.0), (2, pytest.approx(0.8))],
                                                   [(0, pytest.approx(0.8)), (2, pytest.approx(0.6))]]
    assert top_matches(texts, images, 5, 0.7) == [[(1, 1.0), (2, pytest.approx(0.8))], [(0, pytest.approx(0.8))]]
    assert top_matches(texts, images[:0], 3, 0.0) == [[], []]


@pytest.fixture
def clip():
    return build_clip("unused", None, demo=True, dtype="float32")


def seed(url, tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for n, (country, status) in enumerate([("PL", "scored"), ("PL", "scored"), ("PL", "ingested"),
                                           ("PL", "quarantined"), ("DE", "scored"), ("DE", "scored"),
                                           ("FR", "scored")]):
        path = tmp_path / f"{n}.png"
        PILImage.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        images.append(dict(sha256=f"{n:064x}", uri=str(path), country_code=country, status=status))
    clues = [("Polish bollards are red and white.", "PL", "accepted"),
             ("Warsaw has wide avenues.", "PL", "accepted"),
             ("German roads have yellow signs.", "DE", "accepted"),
             ("In Georgia the alphabet is curly.", None, "review"),
             ("Polish review clue.", "PL", "review"),
             ("Kenyan snorkel.", "KE", "accepted")]  # no Kenyan images: no pair
    with session_scope(url) as s:
        add_images(s, images)
        add_clues(s, [dict(sha256=clue_sha256(t), text=t, country=c, status=st, geo_ok=c is not None)
                      for t, c, st in clues])
        return ids_by_sha(s, [im["sha256"] for im in images])


def test_pairs_are_same_country_top_k_and_computed_once(store_url, tmp_path, clip, monkeypatch):
    ids = seed(store_url, tmp_path)
    quarantined = ids[f"{3:064x}"]
    text_calls = []
    real_encode_texts = clip.encode_texts
    monkeypatch.setattr(clip, "encode_texts", lambda texts, **kw: text_calls.append(list(texts)) or
                        real_encode_texts(texts, **kw))
    with session_scope(store_url) as s:
        added = pair_clues(s, clip, top_k=2, min_similarity=-1.0)
    assert added == 6  # 2 Polish clues × 2 + 1 German clue × 2
    assert len(text_calls) == 1 and len(text_calls[0]) == 4  # every clue text embedded in one pass

    with session_scope(store_url) as s:
        rows = s.execute(
            select(Clue.id, Clue.text, Clue.country, CluePair.image_id, CluePair.similarity, CluePair.method)
            .join(CluePair, CluePair.clue_id == Clue.id)
        ).all()
        image_country = {ids[f"{n:064x}"]: c for n, c in enumerate(["PL", "PL", "PL", "PL", "DE", "DE", "FR"])}
        assert {r.method for r in rows} == {"embedding"}
        assert all(image_country[r.image_id] == r.country for r in rows)
        assert quarantined not in {r.image_id for r in rows}
        # the similarity is the cosine of the stored image embedding and the clue's text embedding, best kept
        vectors = stored_embeddings(s, list(ids.values()), clip.version)
        polish_images = [ids[f"{n:064x}"] for n in range(3)]
        for text in ("Polish bollards are red and white.", "Warsaw has wide avenues."):
            t = real_encode_texts([text])[0]
            expected = sorted(polish_images, key=lambda i: -float(vectors[i] @ t))[:2]
            mine = [r for r in rows if r.text == text]
            assert sorted(r.image_id for r in mine) == sorted(expected)
            assert all(r.similarity == pytest.approx(float(vectors[r.image_id] @ t), abs=1e-5) for r in mine)
        # embedded: the images of the countries clues need (3 PL + 2 DE), never the quarantined or the French ones
        assert s.scalar(select(func.count()).select_from(ImageEmbedding)) == 5

    monkeypatch.setattr(clip, "encode_images", lambda *a, **k: pytest.fail("image embeddings recomputed"))
    with session_scope(store_url) as s:
        assert pair_clues(s, clip, top_k=2, min_similarity=-1.0) == 0  # idempotent
        assert s.scalar(select(func.count()).select_from(CluePair)) == 6


def test_minimum_similarity_and_settings_defaults(store_url, tmp_path, clip, monkeypatch):
    """pair_clues takes k and the minimum from its caller; `geocurate clues pair` gives the settings' values."""
    from typer.testing import CliRunner

    from geocurate.cli import app
    from geocurate.settings import reload_settings

    seed(store_url, tmp_path)
    with session_scope(store_url) as s:
        assert pair_clues(s, clip, top_k=3, min_similarity=1.01) == 0
    monkeypatch.setenv("GEOCURATE_PAIRING_TOP_K", "1")
    monkeypatch.setenv("GEOCURATE_PAIRING_MIN_SIMILARITY", "-1")
    monkeypatch.setenv("GEOCURATE_DEMO_MODELS", "true")
    reload_settings()
    result = CliRunner().invoke(app, ["clues", "pair"])
    assert result.exit_code == 0, result.output
    assert "pairs added: 3" in result.output  # one image for each of the three pairable clues
