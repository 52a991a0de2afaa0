"""Pairing clues that came without an image with stored street views, for the reasoning stage.

A clue about Poland is paired with the Polish images whose open_clip image embedding is closest to the clue's text
embedding (top-k above a minimum cosine similarity). Image embeddings come from the store (computed once by
curation.embeddings); the clue texts are embedded in one batched pass per run, never per clue.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from curation.clip import ClipModel
from curation.clues.ingest import link_given_images
from curation.embeddings import image_embeddings
from db.clues import add_clue_pairs, clues_needing_pairs, pairable_images


def top_matches(text_vectors: np.ndarray, image_vectors: np.ndarray, top_k: int,
                min_similarity: float) -> list[list[tuple[int, float]]]:
    """For each text row: (image row, cosine similarity) of its top-k images at or above min_similarity, best
    first. Vectors are L2-normalised, so the dot product is the cosine."""
    if len(image_vectors) == 0 or top_k <= 0:
        return [[] for _ in range(len(text_vectors))]
    similarity = text_vectors @ image_vectors.T
    k = min(top_k, similarity.shape[1])
    best = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [
        [(int(j), float(row[j])) for j in order if row[j] >= min_similarity]
        for row, order in zip(similarity, best)
    ]


def pair_clues(session: Session, clip: ClipModel, top_k: int, min_similarity: float,
               image_base: Path | None = None) -> int:
    """Write "embedding" clue_pairs for usable clues with a country and no image; returns the pairs added.
    Idempotent: clues that already have a pair are left alone. Also links clues whose given image has arrived.
    `top_k` and `min_similarity` are settings.pairing_top_k and pairing_min_similarity unless a caller overrides."""
    added = link_given_images(session, image_base)

    clues = clues_needing_pairs(session)
    if not clues:
        return added
    images_by_country = pairable_images(session, {country for _, _, country in clues})
    all_image_ids = [i for ids in images_by_country.values() for i in ids]
    vectors = image_embeddings(session, all_image_ids, clip) if all_image_ids else {}
    text_vectors = clip.encode_texts([text for _, text, _ in clues])

    rows_by_country: dict[str, list[int]] = defaultdict(list)
    for row, (_, _, country) in enumerate(clues):
        rows_by_country[country].append(row)
    pairs = []
    for country, rows in rows_by_country.items():
        image_ids = [i for i in images_by_country.get(country, []) if i in vectors]
        if not image_ids:
            continue
        matrix = np.stack([vectors[i] for i in image_ids])
        for row, matches in zip(rows, top_matches(text_vectors[rows], matrix, top_k, min_similarity)):
            clue_id = clues[row][0]
            pairs += [dict(clue_id=clue_id, image_id=image_ids[j], method="embedding", similarity=round(s, 6))
                      for j, s in matches]
    return added + add_clue_pairs(session, pairs)
