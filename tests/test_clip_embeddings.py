"""The demo CLIP model builds offline and image embeddings are computed once, then read from the store."""

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import func, select

from curation.clip import build_clip
from curation.embeddings import image_embeddings
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.models import ImageEmbedding


def test_embeddings_are_normalised_cached_and_reused(sqlite_store, tmp_path, monkeypatch):
    clip = build_clip("unused", None, demo=True, dtype="float32")
    paths = []
    for n, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        path = tmp_path / f"{n}.png"
        PILImage.new("RGB", (80, 60), colour).save(path)
        paths.append(path)
    with session_scope(sqlite_store) as s:
        add_images(s, [dict(sha256=f"{n:064x}", uri=str(p)) for n, p in enumerate(paths)])
        ids = list(ids_by_sha(s, [f"{n:064x}" for n in range(3)]).values())
    with session_scope(sqlite_store) as s:
        first = image_embeddings(s, ids, clip)
    assert sorted(first) == sorted(ids)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in first.values())

    calls = []
    monkeypatch.setattr(clip, "encode_images", lambda images, **kw: calls.append(images))
    with session_scope(sqlite_store) as s:
        second = image_embeddings(s, ids, clip)
        assert s.scalar(select(func.count()).select_from(ImageEmbedding)) == 3
    assert calls == []  # every vector came from the store
    assert all(np.allclose(first[i], second[i]) for i in ids)
