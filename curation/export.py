"""Build a curated, versioned export folder (format: geocurate/export_format.py) from the store.

Two streaming passes over the kept images, so a million rows run in constant memory:
1. the kept selection streams once to compute each image's place (city, else H3 cell) into a temporary table;
   group sizes come back from one GROUP BY and places are dealt to train/val/test (curation.splits);
2. the selection streams again joined with that table, ordered by (place, sha256): near-duplicates are removed one
   place at a time (curation.dedup, embeddings from the store, computed only where missing), and each surviving
   image becomes one JSONL line in its place's split.
Then the accepted clue–image pairs become the reasoning stage's training file (pairs whose image lies in a val/test
place are held out). Files are written to a hidden folder and renamed into place when complete; the manifest holds
every file's sha256 and a content hash over the parameters and the files, so equal inputs give an equal hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import exists, not_
from sqlalchemy.orm import Session

from curation.countries import country_name, is_country_code
from curation.decisions import DROP_LABELS, decided_images, not_quarantined
from curation.dedup import near_duplicates
from curation.splits import assign_groups, group_key, parse_split
from db import exports as store
from db.engine import session_scope
from db.models import Image, ReviewTask
from db.quarantine import quarantine
from geocurate.errors import UserError
from geocurate.export_format import MANIFEST, PROMPT, SPLITS, Answer, Example, location_file, reasoning_file

FORMAT_VERSION = "geocurate-export/1"
IMAGES_DIR = "images"
IMAGES_LISTING = "images.sha256"  # `sha256sum -c images.sha256` verifies every image of the export
DEDUP_BATCH_ROWS = 2000  # consecutive places whose embeddings are fetched in one query
ADE20K_DATA = Path(__file__).with_name("data") / "ade20k_locatability.json"


@dataclass
class ExportResult:
    name: str
    path: Path
    content_hash: str
    counts: dict[str, Any]
    removed_duplicates: int
    export_id: int | None = None


# --- answers ----------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def ade20k_tables() -> tuple[list[str], np.ndarray]:
    """Short ADE20K class names and the reference locatability weights."""
    try:  # the scoring part's canonical tables
        from curation.locatability import ADE20K_CLASSES as classes, REFERENCE_WEIGHTS as weights
    except ImportError:
        data = json.loads(ADE20K_DATA.read_text())
        classes, weights = data["classes"], data["weights"]
    return [c.split(",")[0].strip() for c in classes], np.asarray(weights, dtype=np.float64)


def evidence_sentence(class_ratios: dict[str, float] | None, top: int = 3) -> str:
    """The location stage's `reasons`: the classes contributing most to the image's locatability (weight × area),
    the same evidence the score used."""
    names, weights = ade20k_tables()
    contributions = []
    for index, fraction in (class_ratios or {}).items():
        i = int(index)
        if 0 <= i < len(names) and fraction and weights[i] * fraction > 0:
            contributions.append((-weights[i] * float(fraction), names[i]))
    picked = [name for _, name in sorted(contributions)[:top]]
    if not picked:
        return "The scene shows little specific geographic evidence."
    listed = picked[0] if len(picked) == 1 else ", ".join(picked[:-1]) + f" and {picked[-1]}"
    return f"Main geographic evidence: {listed}."


def _image_name(sha256: str, uri: str) -> str:
    suffix = os.path.splitext(uri)[1].lower()
    return f"{IMAGES_DIR}/{sha256}{suffix if 0 < len(suffix) <= 6 else '.jpg'}"


# --- writing ----------------------------------------------------------------------------------------------------

class _HashedWriter:
    """A text file whose sha256 is computed as it is written (no second read of a large file)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.handle, self.digest, self.lines = path, open(path, "wb"), hashlib.sha256(), 0

    def write_line(self, text: str) -> None:
        data = (text + "\n").encode("utf-8")
        self.handle.write(data)
        self.digest.update(data)
        self.lines += 1

    def close(self) -> str:
        self.handle.close()
        return self.digest.hexdigest()


class _ImagePlacer:
    """Links or copies each image into images/ once, and lists it in images.sha256.

    Links of the location pass (unique images, guaranteed by the query) are made by one background thread while the
    main thread goes on serialising: os.symlink releases the GIL, and at a million images it is the export's floor.
    """

    LINK_BATCH = 5000

    def __init__(self, root: Path, mode: str, listing: _HashedWriter):
        self.root, self.mode, self.listing, self.placed = root, mode, listing, 0
        (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self._pending: list[tuple[str, str]] = []
        self._linker = ThreadPoolExecutor(max_workers=1) if mode == "link" else None
        self._jobs: list[Future] = []

    def place_new(self, sha256: str, uri: str) -> str | None:
        """Place an image known not to be placed yet (deferred link)."""
        if self._linker is None:
            return self.place(sha256, uri)
        relative = _image_name(sha256, uri)
        self._pending.append((os.path.abspath(uri), os.path.join(self.root, relative)))
        if len(self._pending) >= self.LINK_BATCH:
            self._submit()
        self.listing.write_line(f"{sha256}  {relative}")
        self.placed += 1
        return relative

    def _submit(self) -> None:
        batch, self._pending = self._pending, []
        while len(self._jobs) >= 4:  # bounded backlog: memory stays constant if linking is the slower side
            self._jobs.pop(0).result()
        self._jobs.append(self._linker.submit(_make_links, batch))

    def wait(self) -> None:
        """All deferred links exist (errors raised here)."""
        if self._linker is not None:
            if self._pending:
                self._submit()
            for job in self._jobs:
                job.result()
            self._jobs = []

    def close(self) -> None:
        if self._linker is not None:
            self._linker.shutdown(wait=True)

    def place(self, sha256: str, uri: str) -> str | None:
        """Relative path of the image in the export; None when a copy's source is gone (caller quarantines)."""
        relative = _image_name(sha256, uri)
        target = os.path.join(self.root, relative)
        source = os.path.abspath(uri)
        try:
            if self.mode == "copy":
                if os.path.lexists(target):
                    return relative
                if not os.path.isfile(source):
                    return None
                shutil.copyfile(source, target)
            else:
                os.symlink(source, target)
        except FileExistsError:
            return relative  # placed already (an image both in location and reasoning)
        self.listing.write_line(f"{sha256}  {relative}")
        self.placed += 1
        return relative


def _make_links(pairs: list[tuple[str, str]]) -> None:
    for source, target in pairs:
        os.symlink(source, target)


def _line(example: Example) -> str:
    """`Example.to_line()` without dataclasses.asdict's deep copies (10x faster; a test keeps them equal)."""
    data = dict(example.__dict__)
    data["answer"] = dict(example.answer.__dict__)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def _content_hash(parameters: dict[str, Any], files: dict[str, str]) -> str:
    canonical = json.dumps({"format": FORMAT_VERSION, "parameters": parameters, "files": files}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- building ---------------------------------------------------------------------------------------------------

def _embedding_lookup(session: Session, embedding_version: str | None):
    """A function ids → {id: vector}: stored vectors first, open_clip only for images that have none."""
    from curation.embeddings import image_embeddings, stored_embeddings

    state: dict[str, Any] = {}

    def lookup(ids: list[int]) -> dict[int, np.ndarray]:
        if "clip" not in state and embedding_version is None:
            from curation.clip import load_clip

            state["clip"] = load_clip()
        version = embedding_version or state["clip"].version
        found = stored_embeddings(session, ids, version)
        missing = [i for i in ids if i not in found]
        if missing:
            if "clip" not in state:
                from curation.clip import load_clip

                state["clip"] = load_clip()
            if state["clip"].version == version:
                found.update(image_embeddings(session, missing, state["clip"]))
        return found

    return lookup


def _drop_reviewed_as_unusable():
    review = exists().where(ReviewTask.item_kind == "image", ReviewTask.item_id == Image.id,
                            ReviewTask.state == "done", ReviewTask.final_label.in_(sorted(DROP_LABELS)))
    return not_(review)


def build_export(session_url: str | None, name: str, threshold: float | None = None, scorer_version: str | None = None,
                 split: str | tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, out_dir: Path | None = None,
                 images: Literal["link", "copy"] | None = None, dedup: bool = True,
                 embedding_version: str | None = None) -> ExportResult:
    """Write export `name` and record it in the store. Raises UserError for a taken name, an unknown scorer
    version or bad parameters. `embedding_version` picks stored embeddings by model version (default: the
    configured open_clip model's)."""
    from geocurate.settings import get_settings

    settings = get_settings()
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise UserError(f"export name {name!r} must be letters, digits, '.', '_' or '-'")
    threshold = settings.threshold if threshold is None else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold {threshold} must be a locatability between 0 and 1")
    fractions = parse_split(split)
    images = images or settings.export_images
    root = Path(out_dir or settings.export_dir)
    final_path = root / name
    if final_path.exists():
        raise UserError(f"{final_path} already exists; exports are never overwritten, choose a new name")

    with session_scope(session_url) as session:
        scorer_version = scorer_version or store.latest_scorer_version(session)
        if not scorer_version:
            raise UserError("the store has no scores yet; run `geocurate score` first")
        parameters = dict(threshold=threshold, scorer_version=scorer_version, split=list(fractions), seed=seed,
                          dedup_similarity=settings.dedup_similarity if dedup else None,
                          h3_resolution=settings.h3_resolution, embedding_version=embedding_version)
        try:
            export_id = store.begin_export(session, name, scorer_version, threshold,
                                           {**parameters, "images": images}, str(final_path.absolute()))
        except FileExistsError:
            raise UserError(f"export {name!r} already exists; exports are immutable, choose a new name") from None

    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with session_scope(session_url) as session:
            result = _write(session, export_id, name, partial, parameters, fractions, seed, images,
                            settings.h3_resolution, settings.dedup_similarity if dedup else None, embedding_version)
            os.replace(partial, final_path)
            result.path = final_path
            _freeze(final_path, images)
        return result
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        with session_scope(session_url) as session:
            store.fail_export(session, export_id)
        raise


def _freeze(root: Path, images: str) -> None:
    """Exports are never modified: their files become read-only (links are left alone)."""
    paths = [root / MANIFEST, root / IMAGES_LISTING, *root.glob("*/*.jsonl")]
    if images == "copy":
        paths += list((root / IMAGES_DIR).iterdir())
    for path in paths:
        path.chmod(0o444)


def _write(session: Session, export_id: int, name: str, root: Path, parameters: dict[str, Any],
           fractions: tuple[float, float, float], seed: int, images: str, h3_resolution: int,
           dedup_similarity: float | None, embedding_version: str | None) -> ExportResult:
    scorer_version, threshold = parameters["scorer_version"], parameters["threshold"]
    groups = store.create_group_table(session)

    # pass 1: place of every kept image → temporary table, then places → splits
    def keyed_rows():
        for row in store.stream(session, decided_images(scorer_version, threshold, lean=True)):
            if not is_country_code(row.country_code):
                quarantine(session, "metadata", row.sha256, "unknown country", f"country code {row.country_code!r}")
                continue
            yield {"image_id": row.id, "group_key": group_key(row.country_code, row.city, row.lat, row.lon,
                                                                h3_resolution)}

    store.add_place_keys(session, groups, keyed_rows())
    split_of = assign_groups(store.group_sizes(session, groups), fractions, seed)

    # pass 2: dedup one place at a time, write lines
    listing = _HashedWriter(root / IMAGES_LISTING)
    placer = _ImagePlacer(root, images, listing)
    writers = {s: _HashedWriter(location_file(root, s)) for s in SPLITS}
    lookup = _embedding_lookup(session, embedding_version) if dedup_similarity is not None else None
    per_country: dict[str, Counter] = {s: Counter() for s in SPLITS}
    groups_per_split: Counter = Counter()
    removed = 0
    items: list[dict[str, Any]] = []

    def flush(batch: list[tuple[str, list[Any]]]) -> None:
        nonlocal removed
        vectors = lookup([r.id for _, rows in batch for r in rows]) if lookup else {}
        for key, rows in batch:
            drop: set[int] = set()
            with_vectors = [r for r in rows if r.id in vectors]
            if len(with_vectors) > 1:
                drop = near_duplicates([r.id for r in with_vectors], np.stack([vectors[r.id] for r in with_vectors]),
                                       [r.locatability for r in with_vectors], dedup_similarity,
                                       [r.sha256 for r in with_vectors])
                removed += len(drop)
            split_name = split_of[key]
            groups_per_split[split_name] += 1
            for r in rows:
                if r.id in drop:
                    continue
                relative = placer.place_new(r.sha256, r.uri)
                if relative is None:
                    quarantine(session, "image", r.uri, "missing at export", f"export {name}")
                    continue
                example = Example(
                    id=r.sha256, image=relative, prompt=PROMPT,
                    answer=Answer(country=country_name(r.country_code), city=r.city,
                                  reasons=evidence_sentence(r.class_ratios)),
                    country_code=r.country_code.upper(), city=r.city, lat=r.lat, lon=r.lon,
                    meta={"locatability": round(float(r.locatability), 6), "place": key,
                          **({"human_label": r.human_label} if r.human_label else {})},
                )
                writers[split_name].write_line(_line(example))
                per_country[split_name][r.country_code.upper()] += 1
                items.append(dict(export_id=export_id, dataset="location", split=split_name, image_id=r.id,
                                  clue_id=None))
        if len(items) >= DEDUP_BATCH_ROWS:
            store.add_export_items(session, items)
            items.clear()

    ordered = decided_images(scorer_version, threshold, groups.c.group_key).join(
        groups, groups.c.image_id == Image.id).order_by(groups.c.group_key, Image.sha256)
    batch: list[tuple[str, list[Any]]] = []
    batch_rows = 0
    for key, rows in groupby(store.stream(session, ordered), key=lambda r: r.group_key):
        rows = list(rows)
        batch.append((key, rows))
        batch_rows += len(rows)
        if batch_rows >= DEDUP_BATCH_ROWS:
            flush(batch)
            batch, batch_rows = [], 0
    if batch:
        flush(batch)

    placer.wait()  # the reasoning pass may place the same images again: their links must exist first

    # reasoning stage: accepted clues with their images, none from a held-out place
    reasoning = _HashedWriter(reasoning_file(root))
    held_out = 0
    pairs = store.accepted_clue_pairs().where(not_quarantined(), _drop_reviewed_as_unusable())
    for r in store.stream(session, pairs):
        key = group_key(r.country_code, r.city, r.lat, r.lon, h3_resolution)
        if split_of.get(key, "train") != "train":
            held_out += 1
            continue
        relative = placer.place(r.sha256, r.uri)
        if relative is None:
            quarantine(session, "image", r.uri, "missing at export", f"export {name}")
            continue
        same_country = (r.country_code or "").upper() == r.clue_country.upper()
        example = Example(
            id=f"{r.clue_sha256[:16]}-{r.sha256[:16]}", image=relative, prompt=PROMPT,
            answer=Answer(country=country_name(r.clue_country), city=r.city if same_country else None, reasons=r.text),
            country_code=r.clue_country.upper(), city=r.city if same_country else None, lat=r.lat, lon=r.lon,
            meta={"clue_id": r.clue_id},
        )
        reasoning.write_line(_line(example))
        items.append(dict(export_id=export_id, dataset="reasoning", split="train", image_id=r.id, clue_id=r.clue_id))
    store.add_export_items(session, items)
    store.drop_group_table(session, groups)
    placer.wait()
    placer.close()

    files = {f"location/{s}.jsonl": w.close() for s, w in writers.items()}
    files["reasoning/train.jsonl"] = reasoning.close()
    files[IMAGES_LISTING] = listing.close()
    counts = {
        "location": {s: writers[s].lines for s in SPLITS},
        "reasoning": {"train": reasoning.lines, "held_out": held_out},
        "images": placer.placed,
        "removed_duplicates": removed,
        "places": {s: groups_per_split[s] for s in SPLITS},
        "per_country": {s: dict(sorted(per_country[s].items())) for s in SPLITS},
    }
    content_hash = _content_hash(parameters, files)
    manifest = {
        "format": FORMAT_VERSION, "name": name, "created_at": datetime.now(timezone.utc).isoformat(),
        "scorer_version": scorer_version, "threshold": threshold, "parameters": parameters, "counts": counts,
        "files": files, "content_hash": content_hash,
        "images": {"mode": images, "listing": IMAGES_LISTING, "count": placer.placed},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    store.finish_export(session, export_id, counts, content_hash)
    return ExportResult(name=name, path=root, content_hash=content_hash, counts=counts, removed_duplicates=removed,
                        export_id=export_id)

