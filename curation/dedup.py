"""Near-duplicate removal: the same panorama crawled twice or re-uploaded must not be in an export twice (or, worse,
once in train and once in test).

Greedy suppression over open_clip image embeddings, most locatable first: an image is removed when its cosine
similarity to an already kept image exceeds the bound. The export runs it within a block of images from one place
(the split group: a city or an H3 cell), which is where copies of the same panorama are, so the cost is the sum of
squared block sizes rather than the square of the export. Those blocks are small (hundreds of rows): a threaded BLAS
spends more on waking its threads than on the product, twenty times more on a busy two-core machine, so callers
looping over many blocks run inside `small_products()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

ROWS_PER_CHUNK = 1024  # similarity rows computed at once: memory is ROWS_PER_CHUNK x block size floats


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
