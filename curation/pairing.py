"""Pairing clues that came without an image with stored street views, for the reasoning stage.

A clue about Poland is paired with the Polish images whose open_clip image embedding is closest to the clue's text
embedding (top-k above a minimum cosine similarity). Image embeddings come from the store (computed once by
curation.embeddings); the clue texts are embedded in one batched pass per run, never per clue.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from curation.clip import ClipModel
from curation.clues.ingest import link_given_images
from curation.embeddings import image_embeddings
from db.clues import accepted_clues_without_country, add_clue_pairs, clues_needing_pairs, pairable_images


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


@dataclass
class PairingSummary:
    """What a pairing pass did and, when it added nothing, why: the counts `geocurate clues pair` and the run print."""

    added: int = 0  # pairs written (given images linked included)
    linked: int = 0  # clues whose given image arrived and was linked
    clues_considered: int = 0  # accepted clues with a country, no image of their own and no pair yet
    clues_paired: int = 0
    clues_without_country: int = 0  # accepted, no image, no pair, but no country to look in: cannot be paired
    clues_no_image_in_country: int = 0  # no stored image of the clue's country (or none with an embedding)
    clues_below_similarity: int = 0  # images of the country exist, none at or above the minimum similarity
    best_similarity: float | None = None  # the best clue-image cosine among those left unpaired
    min_similarity: float = 0.0

    def why_none(self) -> str:
        """One line saying why nothing was added (empty when something was)."""
        if self.added:
            return ""
        if not self.clues_considered:
            extra = (f"; {self.clues_without_country} accepted clue(s) have no country to pair in"
                     if self.clues_without_country else "")
            return f"no accepted clue without an image or pair{extra}"
        parts = []
        if self.clues_no_image_in_country:
            parts.append(f"{self.clues_no_image_in_country} clue(s) have no stored image of their country")
        if self.clues_below_similarity:
            best = f" (best {self.best_similarity:.3f})" if self.best_similarity is not None else ""
            parts.append(f"{self.clues_below_similarity} clue(s) have no same-country image at or above the minimum "
                         f"similarity {self.min_similarity:g}{best}; lower GEOCURATE_PAIRING_MIN_SIMILARITY to pair them")
        if self.clues_without_country:
            parts.append(f"{self.clues_without_country} accepted clue(s) have no country")
        return "; ".join(parts)


def pair_clues(session: Session, clip: ClipModel, top_k: int, min_similarity: float,
               image_base: Path | None = None) -> int:
    """Write "embedding" clue_pairs for usable clues with a country and no image; returns the pairs added.
    See `pair_clues_explained` for the counts behind the number."""
    return pair_clues_explained(session, clip, top_k, min_similarity, image_base).added


def pair_clues_explained(session: Session, clip: ClipModel, top_k: int, min_similarity: float,
                         image_base: Path | None = None) -> PairingSummary:
    """Pair every usable clue with a country and no image (a clue accepted in review included, whenever its review
    ended) and say why clues stayed unpaired. Idempotent: clues that already have a pair are left alone. Also links
    clues whose given image has arrived. `top_k` and `min_similarity` are settings.pairing_top_k and
    pairing_min_similarity unless a caller overrides."""
    summary = PairingSummary(min_similarity=min_similarity)
    summary.linked = link_given_images(session, image_base)
    summary.added = summary.linked
    summary.clues_without_country = len(accepted_clues_without_country(session))

    clues = clues_needing_pairs(session)
    summary.clues_considered = len(clues)
    if not clues:
        return summary
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
            summary.clues_no_image_in_country += len(rows)
            continue
        matrix = np.stack([vectors[i] for i in image_ids])
        for row, matches in zip(rows, top_matches(text_vectors[rows], matrix, top_k, min_similarity)):
            clue_id = clues[row][0]
            if not matches:
                summary.clues_below_similarity += 1
                best = float((matrix @ text_vectors[row]).max())
                summary.best_similarity = best if summary.best_similarity is None else max(best,
                                                                                           summary.best_similarity)
                continue
            summary.clues_paired += 1
            pairs += [dict(clue_id=clue_id, image_id=image_ids[j], method="embedding", similarity=round(s, 6))
                      for j, s in matches]
    summary.added += add_clue_pairs(session, pairs)
    return summary
