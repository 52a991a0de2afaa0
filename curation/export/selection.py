"""Which images an export holds and where: the kept selection (curation.decisions) → places → splits → near-duplicates
removed, in two streaming passes over the store, so a million rows run in constant memory.

1. `deal_places`: the kept selection streams once with the stored vectors; each image's place (canonical city, else
   H3 cell) goes to a temporary table, near-duplicates are found over the whole selection and reduced to one image
   each (curation.export.duplicates), then place groups (cities tied to their H3 cells) are dealt whole to
   train/val/test by the images they keep (curation.splits);
2. `places`: the selection streams again joined with that table, ordered by (place, sha256), and comes out a batch
   of consecutive places at a time with the removed near-duplicates named.

Rows are read by column name: each pass's row type lists the names its query must return, checked when the query is
built, so a change of columns in decided_images fails the export instead of shifting its values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from itertools import groupby, repeat
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Select, Table, and_, null
from sqlalchemy.orm import Session, aliased

from geocurate.countries import is_country_code
from curation.decisions import decided_images, pending_images
from curation.export.duplicates import Duplicates, EmbeddingLookup, SelectionVectors
from curation.export.params import ExportParams
from curation.splits import PlaceGraph, assign_places, cell_key, city_key
from db import exports as store
from db.models import Image, ImageEmbedding, Score
from db.quarantine import quarantine

PLACE_BATCH_ROWS = 2000  # consecutive places handed to the writer at a time


class LocatedImage(NamedTuple):
    """A row of the first pass: decided_images' lean columns, the image's path, its locatability and its stored
    vector (None when the store has none, or dedup is off)."""

    id: int
    sha256: str
    lat: float
    lon: float
    country_code: str
    city: str | None
    uri: str
    locatability: float
    vector: bytes | None


class KeptImage(NamedTuple):
    """A row of the second pass: decided_images' columns, the image's place and its stored vector (None when the
    store has none, or dedup is off)."""

    id: int
    sha256: str
    uri: str
    lat: float
    lon: float
    country_code: str
    city: str | None
    locatability: float
    class_ratios: dict[str, float] | None
    human_label: str | None
    place: str


class Place(NamedTuple):
    key: str
    split: str
    images: list[KeptImage]  # in sha256 order, near-duplicates included
    duplicates: set[int] | frozenset[int]  # ids removed as near-duplicates (the whole export's)


Row = TypeVar("Row", LocatedImage, KeptImage)


def named_rows(session: Session, stmt: Select, row_type: type[Row]) -> Iterator[Row]:
    """`stmt`'s rows as `row_type`, streamed; raises when the query's column names are not the row type's."""
    names = tuple(stmt.selected_columns.keys())
    if names != row_type._fields:
        raise RuntimeError(f"the export reads {row_type.__name__} columns {row_type._fields}, the query returns "
                           f"{names}")
    # what row_type._make does, less its length check (the names matched) and its Python frame: a million rows pass
    return map(tuple.__new__, repeat(row_type), store.stream_rows(session, stmt))


def deal_places(session: Session, params: ExportParams, groups: Table,
                on_kept: Callable[[str, str], Any] | None) -> tuple[dict[str, str], Duplicates]:
    """Pass 1: every kept image's place into `groups` (images with an unknown country are quarantined instead),
    `on_kept(sha256, uri)` called for each; near-duplicates found across the whole selection and resolved, then
    places dealt to splits by the images that remain. Returns place → split name (every city and H3 cell the
    kept images touch) and the near-duplicates."""
    known_country: dict[str | None, bool] = {}
    city_places: dict[tuple[str | None, str], str] = {}
    tied: set[tuple[str, float, float]] = set()
    graph = PlaceGraph()
    h3_resolution = params.h3_resolution
    similarity = params.dedup_similarity
    lookup = None
    if similarity is not None and (params.embedding_version is not None or _any_kept(session, params)):
        lookup = EmbeddingLookup(session, params.embedding_version, params.clip)  # open_clip: when needed
    if lookup is not None:
        stored = aliased(ImageEmbedding, name="stored_embedding")
        kept = decided_images(params.scorer_version, params.threshold, Image.uri, Score.locatability,
                              stored.vector, lean=True, exclude_pending=params.excluded_band).outerjoin(
            stored, and_(stored.image_id == Image.id, stored.model_version == lookup.version))
        vectors = SelectionVectors(lookup, similarity)
    else:
        kept = decided_images(params.scorer_version, params.threshold, Image.uri, Score.locatability,
                              null().label("vector"), lean=True, exclude_pending=params.excluded_band)
        vectors = None
    sizes: Counter[str] = Counter()

    def keyed_rows() -> Iterator[tuple[int, str]]:
        for image in named_rows(session, kept, LocatedImage):
            code = image.country_code
            valid = known_country.get(code)
            if valid is None:
                valid = known_country[code] = is_country_code(code)
            if not valid:
                quarantine(session, "metadata", image.sha256, "unknown_country", f"country code {code!r}")
                continue
            city = image.city
            if city and city.strip():  # a place per (country, city): its canonical name found once per spelling
                key = city_places.get((code, city))
                if key is None:
                    key = city_places[(code, city)] = city_key(code, city)
                # the city's streets, to the nearest 0.01° (the cell lookup is the cost: one per square, not image)
                square = (key, round(image.lat, 2), round(image.lon, 2))
                if square not in tied:  # a misspelled city, or a city-less image, in the same cell joins it
                    tied.add(square)
                    graph.join(key, cell_key(square[1], square[2], h3_resolution))
            else:
                key = cell_key(image.lat, image.lon, h3_resolution)
            sizes[key] += 1
            if vectors is not None:
                vectors.add(image.id, image.locatability, key, image.vector)
            if on_kept is not None:
                on_kept(image.sha256, image.uri)
            yield image.id, key

    store.add_place_keys(session, groups, keyed_rows())
    store.analyze(session, groups)
    duplicates = vectors.resolve() if vectors is not None else Duplicates()
    sizes.subtract(duplicates.removed_per_place)  # places are dealt by the images they will hold
    return assign_places(sizes, graph, params.split, params.seed), duplicates


def _any_kept(session: Session, params: ExportParams) -> bool:
    return session.execute(decided_images(params.scorer_version, params.threshold, lean=True,
                                          exclude_pending=params.excluded_band).limit(1)).first() is not None


def places(session: Session, params: ExportParams, groups: Table, split_of: dict[str, str],
           duplicates: Duplicates) -> Iterator[list[Place]]:
    """Pass 2: the kept images by place (and sha256), a batch of consecutive places at a time, with the
    near-duplicates pass 1 removed named."""
    columns = [groups.c.group_key.label("place")]
    ordered = decided_images(params.scorer_version, params.threshold, *columns, exclude_pending=params.excluded_band)
    ordered = ordered.join(groups, groups.c.image_id == Image.id).order_by(groups.c.group_key, Image.sha256)
    drop = duplicates.removed

    batch: list[Place] = []
    batch_rows = 0
    for key, images in groupby(named_rows(session, ordered, KeptImage), key=attrgetter("place")):
        images = list(images)
        batch.append(Place(key, split_of[key], images, drop))
        batch_rows += len(images)
        if batch_rows >= PLACE_BATCH_ROWS:
            yield batch
            batch, batch_rows = [], 0
    if batch:
        yield batch


def pending_summary(params: ExportParams, session: Session) -> dict[str, Any]:
    """What the manifest says about images still waiting for review in the version's band (with a location, the
    ones the location stage could use): how many, and what the policy did with them. `left_out` are not in the
    export; `kept_by_score` went in on their score alone."""
    summary: dict[str, Any] = {"policy": params.pending,
                               "review_band": list(params.review_band) if params.review_band else None,
                               "pending": 0, "left_out": 0, "kept_by_score": 0, "dropped_by_score": 0}
    if params.review_band is None:
        return summary
    pending, above = session.execute(pending_images(params.scorer_version, params.review_band,
                                                    params.threshold)).one()
    pending, above = int(pending or 0), int(above or 0)
    summary["pending"] = pending
    if params.pending == "exclude":
        summary["left_out"] = pending
    else:
        summary["kept_by_score"], summary["dropped_by_score"] = above, pending - above
    return summary
