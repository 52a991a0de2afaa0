"""Near-duplicate removal: the same panorama crawled twice or re-uploaded must not be in an export twice (or, worse,
once in train and once in test).

Two images are near-duplicates when the cosine similarity of their open_clip image embeddings exceeds the bound.
`near_duplicates` is greedy suppression over one set of images, most locatable first: an image is removed when it
is a near-copy of an already kept one.

`duplicate_groups` searches a whole export's selection, not one place at a time: copies filed under two cities
("Kraków" and "Cracow", or a wrong city) are where a place-blocked search cannot see and where they do harm, landing
in train and test. An exact all-pairs search is out of reach (600k images: 10^11 pairs), so candidates come from
two sources, and every candidate pair is then checked with the exact cosine against the same bound:
- every pair within one place (the city or H3 cell an image is filed under), as before: exact where copies of one
  panorama usually are;
- random-hyperplane LSH over the whole selection (`LSH_TABLES` tables of `bits` sign bits each): a pair at angle θ
  shares a table's key with probability (1 - θ/π)^bits, so across places a pair exactly at the 0.95 bound is found
  with probability ~0.9 at 600k images, one at 0.99 (re-encoded copies) with > 0.9999 (`lsh_recall` gives the figure
  for an export; the manifest records it). Vectors are centred on the selection's mean first, which spreads real
  CLIP embeddings (they share a large common direction) over the hyperplanes.
Found pairs are joined into groups (connected components), and each group is reduced to one image by
`near_duplicates`: reduced rather than kept together in one split, because a second copy of a panorama teaches the
model nothing new and only weights it twice, and because reduction is what the place-blocked search already did,
so the rule is the same whether copies share a place or not. After reduction no two remaining images of a group are
near-duplicates, so none can cross a split.

Small products on a busy two-core machine: a threaded BLAS spends more on waking its threads than on the product,
twenty times more, so callers looping over many small blocks run inside `small_products()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits

ROWS_PER_CHUNK = 1024  # similarity rows computed at once: memory is ROWS_PER_CHUNK x block size floats
LSH_TABLES = 24
LSH_SEED = 20240610  # fixed: the same selection always gives the same candidates, so exports are reproducible
HASH_ROWS = 8192  # rows hashed at once: memory is HASH_ROWS x LSH_TABLES x bits floats
PAIRS_PER_CHUNK = 1 << 16  # candidate pairs whose cosine is computed at once


def small_products():
    """Context: BLAS on one thread (the thread count does not change gemm's results, only its overhead)."""
    return threadpool_limits(limits=1, user_api="blas")


def near_duplicates(ids: Sequence[int], vectors: np.ndarray, priority: Sequence[float], similarity: float,
                    tie_break: Sequence[str] | None = None) -> set[int]:
    """Ids to remove. `vectors` are L2-normalised rows aligned with `ids`; higher `priority` (locatability) is kept,
    ties broken by `tie_break` (sha256) so the result does not depend on row order."""
    n = len(ids)
    if n < 2:
        return set()
    keys = tie_break if tie_break is not None else [str(i) for i in ids]
    order = sorted(range(n), key=lambda i: (-float(priority[i]), keys[i]))
    ranked = np.asarray(vectors, dtype=np.float32)[order]
    removed = np.zeros(n, dtype=bool)
    for start in range(0, n, ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, n)
        # close[i, j]: image start+i is a near-copy of a less locatable image j (j > start+i)
        close = np.triu(ranked[start:stop] @ ranked.T > similarity, k=start + 1)  # (chunk, n)
        # only rows with a near-copy can remove anything: the greedy loop visits those few, not every row
        for local in np.flatnonzero(close.any(axis=1)):
            if not removed[start + local]:
                removed |= close[local]
    return {ids[order[i]] for i in np.flatnonzero(removed)}


def lsh_bits(n: int) -> int:
    """Sign bits per table: enough that random pairs rarely share a key (about n/8 chance pairs per table)."""
    return min(24, max(8, math.ceil(math.log2(max(n, 2))) + 2))


def lsh_recall(similarity: float, n: int, centred_norm2: float = 1.0) -> float:
    """Probability that the LSH tables put a pair at cosine `similarity` in one bucket at least once.
    `centred_norm2` is the mean squared norm of the centred vectors (1 for uncentred random ones): centring shrinks
    vectors and so widens the angle between two near-copies."""
    cos = 1.0 - (1.0 - similarity) / max(centred_norm2, 1e-6)
    theta = math.acos(max(-1.0, min(1.0, cos)))
    per_table = (1.0 - theta / math.pi) ** lsh_bits(n)
    return 1.0 - (1.0 - per_table) ** LSH_TABLES


@dataclass
class DuplicateGroups:
    """`pairs`: (i, j) row indices (i < j) with cosine above the bound; `labels`: each row's group (rows in no pair
    are groups of one); `recall`: lsh_recall of a pair at the bound for this selection."""

    pairs: np.ndarray
    labels: np.ndarray
    recall: float


def _close(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, similarity: float) -> np.ndarray:
    keep = np.zeros(len(a), dtype=bool)
    for start in range(0, len(a), PAIRS_PER_CHUNK):
        stop = start + PAIRS_PER_CHUNK
        dots = np.einsum("ij,ij->i", vectors[a[start:stop]], vectors[b[start:stop]])
        keep[start:stop] = dots > similarity
    return keep


def _place_pairs(vectors: np.ndarray, blocks: np.ndarray, has_vector: np.ndarray, similarity: float) -> np.ndarray:
    """Exact: every pair within each block (place)."""
    rows = np.flatnonzero(has_vector)
    rows = rows[np.argsort(blocks[rows], kind="stable")]
    sorted_blocks = blocks[rows]
    bounds = np.flatnonzero(np.diff(sorted_blocks)) + 1
    found = []
    with small_products():
        for members in np.split(rows, bounds):
            if len(members) < 2:
                continue
            block = vectors[members]
            for start in range(0, len(members), ROWS_PER_CHUNK):
                close = np.triu(block[start:start + ROWS_PER_CHUNK] @ block.T > similarity, k=start + 1)
                i, j = np.nonzero(close)
                if len(i):
                    found.append(np.stack([members[start + i], members[j]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def _lsh_candidates(vectors: np.ndarray, has_vector: np.ndarray, mean: np.ndarray, bits: int) -> np.ndarray:
    """Pair codes (i * n + j, i < j) of rows sharing a key in at least one table (hyperplanes through `mean`)."""
    n, dim = vectors.shape
    rng = np.random.default_rng(LSH_SEED)
    planes = rng.standard_normal((dim, LSH_TABLES * bits)).astype(np.float32)
    weights = (2.0 ** np.arange(bits)).astype(np.float32)  # exact in float32 up to 2^24
    offset = mean @ planes
    keys = np.empty((LSH_TABLES, n), dtype=np.uint32)
    for start in range(0, n, HASH_ROWS):
        signs = (vectors[start:start + HASH_ROWS] @ planes > offset).astype(np.float32)
        keys[:, start:start + HASH_ROWS] = (signs.reshape(-1, LSH_TABLES, bits) @ weights).T
    rows = np.flatnonzero(has_vector)
    codes = []
    for table in keys:
        order = rows[np.argsort(table[rows])]
        sorted_keys = table[order]
        for offset_ in range(1, len(order)):  # rows i and i+offset of one key run: every pair of the run once
            same = np.flatnonzero(sorted_keys[:-offset_] == sorted_keys[offset_:])
            if not len(same):
                break
            a, b = order[same], order[same + offset_]
            codes.append(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))
    return np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)


def _mean(vectors: np.ndarray, has_vector: np.ndarray) -> np.ndarray:
    """The mean vector, summed in a fixed order in float64 so that it does not depend on the machine's BLAS."""
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    for start in range(0, len(vectors), HASH_ROWS):
        total += vectors[start:start + HASH_ROWS][has_vector[start:start + HASH_ROWS]].astype(np.float64).sum(0)
    return (total / max(int(has_vector.sum()), 1)).astype(np.float32)


def duplicate_groups(vectors: np.ndarray, has_vector: np.ndarray, blocks: np.ndarray,
                     similarity: float) -> DuplicateGroups:
    """Near-duplicate groups over the whole selection. `vectors` are L2-normalised rows (zeros where `has_vector`
    is false: those are never compared), `blocks` each row's place index. Rows are expected in a fixed order (the
    caller sorts them), so that the mean, and with it the candidates, is the same on every build."""
    n = len(vectors)
    pairs = _place_pairs(vectors, blocks, has_vector, similarity)
    compared = int(has_vector.sum())
    mean = _mean(vectors, has_vector)
    bits = lsh_bits(compared)
    codes = _lsh_candidates(vectors, has_vector, mean, bits) if compared > 1 else np.empty(0, dtype=np.int64)
    a, b = codes // max(n, 1), codes % max(n, 1)
    keep = _close(vectors, a, b, similarity)
    pairs = np.concatenate([pairs, np.stack([a[keep], b[keep]], axis=1)]).astype(np.int64)
    if len(pairs):
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    centred = 1.0 - float(mean @ mean)  # mean squared norm of the centred unit vectors
    return DuplicateGroups(pairs=pairs, labels=labels, recall=lsh_recall(similarity, compared, centred))
