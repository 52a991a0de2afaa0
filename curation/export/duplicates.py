"""Near-duplicates (the same panorama crawled twice, re-uploads) within each place, on open_clip image embeddings:
vectors come joined to the selection from the store, and only images without one are looked up (open_clip computes
and stores those when the requested embedding version is its own)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from curation.dedup import near_duplicates
from curation.embeddings import image_embeddings, stored_embeddings, to_vector
from curation.export.params import ClipSettings

if TYPE_CHECKING:
    from curation.export.selection import KeptImage


class EmbeddingLookup:
    """Vectors of images the selection found none for. `version` is the requested embedding version, else the
    open_clip model's (which loads the model); without a model, images with no stored vector are not compared."""

    def __init__(self, session: Session, embedding_version: str | None, clip: ClipSettings | None):
        self.session, self.settings, self.clip = session, clip, None
        self.version = embedding_version or self._clip().version

    def _clip(self):
        if self.clip is None:
            from curation.clip import load_clip  # torch: only when a vector must be computed

            self.clip = load_clip(self.settings)
        return self.clip

    def __call__(self, ids: list[int]) -> dict[int, np.ndarray]:
        found = stored_embeddings(self.session, ids, self.version)
        missing = [i for i in ids if i not in found]
        if missing and self.settings is not None and self._clip().version == self.version:
            found.update(image_embeddings(self.session, missing, self.clip))
        return found


def duplicates_in(places: Sequence[Sequence[KeptImage]], lookup: EmbeddingLookup, similarity: float) -> set[int]:
    """Ids to drop in a batch of places, the most locatable copy kept; the missing vectors of the whole batch are
    looked up together, and places of a single image skipped."""
    crowded = [images for images in places if len(images) > 1]
    missing = [image.id for images in crowded for image in images if image.vector is None]
    found = lookup(missing) if missing else {}
    drop: set[int] = set()
    for images in crowded:
        with_vectors = []
        for image in images:
            vector = to_vector(image.vector) if image.vector is not None else found.get(image.id)
            if vector is not None:
                with_vectors.append((image, vector))
        if len(with_vectors) > 1:
            drop |= near_duplicates([image.id for image, _ in with_vectors], np.stack([v for _, v in with_vectors]),
                                    [image.locatability for image, _ in with_vectors], similarity,
                                    [image.sha256 for image, _ in with_vectors])
    return drop
