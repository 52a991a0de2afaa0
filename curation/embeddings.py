"""Whole-image open_clip embeddings, computed once per (image, model version) and kept in the store.

Clue pairing and near-duplicate removal both need them; neither recomputes what the store already has.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.files import local_path
from db.models import Image, ImageEmbedding

if TYPE_CHECKING:  # torch costs ~500 MiB of memory: readers of stored vectors (exports) never need it
    from curation.clip import ClipModel
from db.upsert import insert_ignore

CHUNK = 256


def to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def stored_embeddings(session: Session, image_ids: Iterable[int], model_version: str) -> dict[int, np.ndarray]:
    ids = list(image_ids)
    found: dict[int, np.ndarray] = {}
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            select(ImageEmbedding.image_id, ImageEmbedding.vector).where(
                ImageEmbedding.model_version == model_version, ImageEmbedding.image_id.in_(ids[start : start + 1000])
            )
        )
        found.update((image_id, to_vector(blob)) for image_id, blob in rows)
    return found


def store_embeddings(session: Session, vectors: dict[int, np.ndarray], model_version: str) -> None:
    rows = (
        dict(image_id=i, model_version=model_version, dim=int(v.shape[0]), vector=v.astype(np.float32).tobytes())
        for i, v in vectors.items()
    )
    insert_ignore(session, ImageEmbedding.__table__, rows, conflict=["image_id", "model_version"])


def image_embeddings(session: Session, image_ids: Iterable[int], clip: ClipModel) -> dict[int, np.ndarray]:
    """Embeddings for the given images: from the store where present, computed (batched) and stored otherwise.
    Images that can no longer be opened are left out (ingest already quarantined unreadable files)."""
    ids = list(dict.fromkeys(image_ids))
    result = stored_embeddings(session, ids, clip.version)
    missing = [i for i in ids if i not in result]
    uris = dict(session.execute(select(Image.id, Image.uri).where(Image.id.in_(missing))).tuples().all()) if missing else {}
    for start in range(0, len(missing), CHUNK):
        batch_ids, images = [], []
        for image_id in missing[start : start + CHUNK]:
            try:
                with PILImage.open(local_path(uris[image_id])) as im:
                    images.append(im.convert("RGB"))
                batch_ids.append(image_id)
            except (OSError, KeyError, ValueError):
                continue
        if not images:
            continue
        vectors = dict(zip(batch_ids, clip.encode_images(images)))
        store_embeddings(session, vectors, clip.version)
        result.update(vectors)
    return result
