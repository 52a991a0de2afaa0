"""Near-duplicates (the same panorama crawled twice, re-uploads) across an export's whole selection, on open_clip
image embeddings, found before splits are dealt (curation.dedup.duplicate_groups says how, and why each group is
reduced to its most locatable image).

The first pass hands every kept image to a `SelectionVectors` with its stored vector (joined to the selection) and
its place; images without one are looked up at the end (open_clip computes and stores those when the requested
embedding version is its own). Memory: 4 bytes per dimension per kept image (154 MB for 600k 64-d vectors), plus
the ids, places and locatabilities."""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.dedup import duplicate_groups, near_duplicates, small_products
from curation.embeddings import image_embeddings, stored_embeddings
from curation.export.params import ClipSettings
from db.models import Image

CHUNK_ROWS = 65536  # stored vectors decoded into an array this many rows at a time
LOOKUP_ROWS = 2000  # images without a stored vector looked up together
RESOLUTION = "reduced to the most locatable image"


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


@dataclass
class Duplicates:
    """What the search found: `removed` image ids, and the counts the manifest reports."""

    removed: set[int] | frozenset[int] = frozenset()
    removed_per_place: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    _pairs: np.ndarray | None = None  # (i, j) rows found near-duplicate
    _ids: np.ndarray | None = None
    _places: np.ndarray | None = None  # each row's place, an index into _place_keys
    _place_keys: list[str] = field(default_factory=list)
    _groups: list[np.ndarray] = field(default_factory=list)  # each group's rows
    searched: bool = False

    def held_out(self, split_of: Mapping[str, str]) -> set[int]:
        """Removed images whose group's remaining image lies in a val or test place: not in the location files, and
        a reasoning pair with one must be held out too, or training would see a near-copy of an evaluation image."""
        held: set[int] = set()
        keys = self._place_keys
        for rows in self._groups:
            ids = [int(self._ids[r]) for r in rows]
            kept = [r for r, i in zip(rows, ids) if i not in self.removed]
            if any(split_of[keys[self._places[r]]] != "train" for r in kept):
                held.update(i for i in ids if i in self.removed)
        return held

    def cross_split(self, split_of: Mapping[str, str]) -> int:
        """Near-duplicate pairs whose two images are both exported, in different splits: 0 unless a bug."""
        if self._pairs is None or not len(self._pairs):
            return 0
        removed = self.removed
        count = 0
        for i, j in self._pairs.tolist():
            if int(self._ids[i]) in removed or int(self._ids[j]) in removed:
                continue
            keys = self._place_keys
            if split_of[keys[self._places[i]]] != split_of[keys[self._places[j]]]:
                count += 1
        return count

    def report(self, split_of: Mapping[str, str]) -> dict[str, Any]:
        """The manifest's `near_duplicates` entry; raises when a near-duplicate pair crosses a split."""
        if not self.searched:
            return {"searched": False}
        crossing = self.cross_split(split_of)
        if crossing:
            raise RuntimeError(f"{crossing} near-duplicate pairs would cross splits after resolution: a bug in the "
                               "export (near-duplicate groups must be resolved before splits are dealt)")
        return {**self.stats, "searched": True, "cross_split_after_resolution": crossing}


class SelectionVectors:
    """The first pass's kept images, with their vectors, places and locatability: `add` per row, then `resolve`."""

    def __init__(self, lookup: EmbeddingLookup, similarity: float):
        self.lookup, self.similarity = lookup, similarity
        # 8 bytes a row each (a list would hold an object per row: 600k images cost 130 MB more)
        self.ids = array("q")
        self.locatability = array("d")
        self.places = array("q")  # index into self.place_keys
        self.place_keys: list[str] = []
        self._place_index: dict[str, int] = {}
        self._blobs: list[bytes | None] = []
        self._chunks: list[tuple[int, np.ndarray | None]] = []  # (first row, vectors or None: all missing)
        self.dim: int | None = None

    def add(self, image_id: int, locatability: float, place: str, vector: bytes | None) -> None:
        index = self._place_index.get(place)
        if index is None:
            index = self._place_index[place] = len(self.place_keys)
            self.place_keys.append(place)
        self.ids.append(image_id)
        self.locatability.append(locatability)
        self.places.append(index)
        self._blobs.append(vector)
        if len(self._blobs) >= CHUNK_ROWS:
            self._decode()

    def _decode(self) -> None:
        first = len(self.ids) - len(self._blobs)
        blobs, self._blobs = self._blobs, []
        if self.dim is None:
            sample = next((b for b in blobs if b is not None), None)
            if sample is None:
                self._chunks.append((first, None))
                return
            self.dim = len(sample) // 4
        width = self.dim * 4
        zero = bytes(width)
        self._chunks.append((first, np.frombuffer(b"".join(b if b is not None and len(b) == width else zero
                                                           for b in blobs), dtype=np.float32)
                             .reshape(-1, self.dim)))

    def _matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows' vectors (zeros where none) and which rows have one; missing ones looked up first."""
        self._decode()
        n = len(self.ids)
        bounds = [first for first, _ in self._chunks] + [n]
        missing: list[int] = []
        for k, (first, chunk) in enumerate(self._chunks):
            if chunk is None:
                missing += range(first, bounds[k + 1])
            else:
                missing += (np.flatnonzero(~chunk.any(axis=1)) + first).tolist()
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(missing), LOOKUP_ROWS):
            found.update(self.lookup([self.ids[row] for row in missing[start:start + LOOKUP_ROWS]]))
        if self.dim is None and found:
            self.dim = len(next(iter(found.values())))
        vectors = np.zeros((n, self.dim or 1), dtype=np.float32)  # pages are taken as rows are copied in
        chunks, self._chunks = self._chunks, []
        while chunks:  # each chunk freed once copied: the vectors are held once, not twice
            first, chunk = chunks.pop(0)
            if chunk is not None:
                vectors[first:first + len(chunk)] = chunk
            del chunk
        for row in missing:
            vector = found.get(self.ids[row])
            if vector is not None and len(vector) == self.dim:
                vectors[row] = vector
        return vectors, vectors.any(axis=1)

    def resolve(self) -> Duplicates:
        """Near-duplicate groups over every kept image, each reduced to its most locatable image."""
        if len(self.ids) < 2:
            return Duplicates(searched=True, stats=_stats(0, 0, 0, 0, 1.0, 0))
        vectors, has_vector = self._matrix()
        places = np.asarray(self.places, dtype=np.int64)
        groups = duplicate_groups(vectors, has_vector, places, self.similarity)
        removed: set[int] = set()
        members_of: list[np.ndarray] = []
        grouped = cross_place = in_groups = 0
        if len(groups.pairs):
            rows = np.unique(groups.pairs)
            labels = groups.labels[rows]
            order = np.argsort(labels, kind="stable")
            rows, labels = rows[order], labels[order]
            sha256 = _sha256(self.lookup.session, [self.ids[r] for r in rows.tolist()])  # ties: sha256 order
            members_of = np.split(rows, np.flatnonzero(np.diff(labels)) + 1)
            with small_products():  # groups are small: one BLAS thread
                for members in members_of:
                    grouped += 1
                    in_groups += len(members)
                    cross_place += len(set(places[members].tolist())) > 1
                    removed |= near_duplicates([self.ids[r] for r in members], vectors[members],
                                               [self.locatability[r] for r in members], self.similarity,
                                               [sha256[self.ids[r]] for r in members])
        ids = np.asarray(self.ids, dtype=np.int64)
        per_place: dict[str, int] = {}
        if removed:
            for row in np.flatnonzero(np.isin(ids, np.fromiter(removed, dtype=np.int64))).tolist():
                key = self.place_keys[self.places[row]]
                per_place[key] = per_place.get(key, 0) + 1
        return Duplicates(removed=removed, removed_per_place=per_place, searched=True,
                          stats=_stats(grouped, in_groups, cross_place, len(removed), groups.recall,
                                       int(has_vector.sum())),
                          _pairs=groups.pairs, _ids=ids, _places=places, _place_keys=self.place_keys, _groups=members_of)


def _sha256(session: Session, ids: list[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for start in range(0, len(ids), 1000):
        found.update(session.execute(select(Image.id, Image.sha256).where(Image.id.in_(ids[start:start + 1000])))
                     .tuples().all())
    return found


def _stats(groups: int, images: int, cross_place: int, removed: int, recall: float, compared: int) -> dict[str, Any]:
    return {"groups": groups, "images_in_groups": images, "groups_across_places": cross_place, "removed": removed,
            "resolution": RESOLUTION, "images_compared": compared,
            "search": "exact within each place; across places random-hyperplane LSH, every candidate checked exactly",
            "lsh_recall_at_bound": round(recall, 4)}
