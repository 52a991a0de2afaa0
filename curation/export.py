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

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import and_, exists, not_
from sqlalchemy.orm import Session, aliased

from curation.countries import country_name, is_country_code
from curation.decisions import DROP_LABELS, decided_images, not_quarantined
from curation.dedup import near_duplicates, small_products
from curation.embeddings import to_vector
from curation.files import local_path
from curation.splits import assign_groups, group_key, parse_split
from db import exports as store
from db.engine import session_scope
from db.heartbeat import beating, is_dead_local, worker_id
from db.models import Image, ImageEmbedding, ReviewTask
from db.quarantine import quarantine
from geocurate.errors import UserError
from geocurate.export_format import MANIFEST, PROMPT, SPLITS, Answer, Example, location_file, reasoning_file

FORMAT_VERSION = "geocurate-export/1"
IMAGES_DIR = "images"
IMAGES_LISTING = "images.sha256"  # `sha256sum -c images.sha256` verifies every image of the export
DEDUP_BATCH_ROWS = 2000  # consecutive places whose missing embeddings are looked up together
NO_EVIDENCE = "The scene shows little specific geographic evidence."
# positions in the location pass's rows: decided_images' columns, then the place key and the stored vector
LOCATABILITY, PLACE, VECTOR = 7, 11, 12
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


@lru_cache(maxsize=1)
def _evidence_tables() -> tuple[list[str], list[float]]:
    """`ade20k_tables` as Python floats: a product of two Python floats is the same IEEE double as numpy's, without
    a numpy scalar per class of a million images."""
    names, weights = ade20k_tables()
    return names, [float(w) for w in weights]


def evidence_sentence(class_ratios: dict[str, float] | None, top: int = 3) -> str:
    """The location stage's `reasons`: the classes contributing most to the image's locatability (weight × area),
    the same evidence the score used."""
    if not class_ratios:
        return NO_EVIDENCE
    names, weights = _evidence_tables()
    count = len(names)
    contributions = []
    for index, fraction in class_ratios.items():
        i = int(index)
        if 0 <= i < count and fraction:
            contribution = weights[i] * fraction
            if contribution > 0:
                contributions.append((-contribution, names[i]))
    if not contributions:
        return NO_EVIDENCE
    picked = [name for _, name in sorted(contributions)[:top]]
    listed = picked[0] if len(picked) == 1 else ", ".join(picked[:-1]) + f" and {picked[-1]}"
    return f"Main geographic evidence: {listed}."


def _image_name(sha256: str, uri: str) -> str:
    suffix = os.path.splitext(uri)[1].lower()
    return f"{IMAGES_DIR}/{sha256}{suffix if 0 < len(suffix) <= 6 else '.jpg'}"


# --- writing ----------------------------------------------------------------------------------------------------

class _HashedWriter:
    """A text file whose sha256 is computed as it is written (no second read of a large file). Lines are buffered
    and written, hashed and counted a block at a time."""

    BLOCK_LINES = 4096

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.handle, self.digest, self.lines = path, open(path, "wb"), hashlib.sha256(), 0
        self._pending: list[str] = []

    def write_line(self, text: str) -> None:
        self._pending.append(text)
        if len(self._pending) >= self.BLOCK_LINES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = ("\n".join(self._pending) + "\n").encode("utf-8")
            self.handle.write(data)
            self.digest.update(data)
            self.lines += len(self._pending)
            self._pending = []

    def flush(self) -> None:
        self._flush()
        self.handle.flush()

    def close(self) -> str:
        self._flush()
        self.handle.close()
        return self.digest.hexdigest()


# Symlinks are the floor of a large export: each is a journaled directory insert, ~20 µs on tmpfs and 60-300 µs on a
# busy ext4 disk (600k of them: 40-90 s), and several threads in one directory are slower still (the directory's
# lock serialises them). So they start as early as possible, in the first pass, and run beside everything else in
# a small child process (its own interpreter: a thread would wait for the serialiser's GIL after every symlink).
# Requests go through a spool file rather than a pipe, so the exporter never waits for the disk and memory stays
# constant; closing the child's stdin says that no more will come.
_LINKER = r"""
import os, select, sys
spool, rest, done = open(sys.argv[1], "rb", buffering=0), b"", False
os.chdir(sys.argv[2])
while True:
    chunk = spool.read(1 << 20)
    if not chunk:
        if done:
            break
        if select.select([sys.stdin], [], [], 0.05)[0] and not os.read(sys.stdin.fileno(), 1):
            done = True  # the exporter closed stdin after its last request: read the spool to its end once more
        continue
    parts = (rest + chunk).split(b"\0")
    rest = parts.pop()
    if len(parts) % 2:
        rest = parts.pop() + b"\0" + rest
    for i in range(0, len(parts), 2):
        os.symlink(parts[i], parts[i + 1])
if rest:
    sys.exit("incomplete link request at the end of the spool")
"""


class _Linker:
    """Symlinks in `images_dir` made by a child process (see _LINKER); `wait` raises if any failed."""

    BATCH = 5000

    def __init__(self, images_dir: str) -> None:
        self.spool = tempfile.NamedTemporaryFile(prefix="geocurate-links-", delete=False)
        self.process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LINKER, self.spool.name, images_dir],
                                        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.requested = 0
        self._pending: list[str] = []

    def link(self, source: str, name: str) -> None:
        self._pending += (source, name)
        if len(self._pending) >= 2 * self.BATCH:
            self._send()

    def _send(self) -> None:
        if self._pending:
            self.spool.write(("\0".join(self._pending) + "\0").encode("utf-8", "surrogateescape"))  # = os.fsencode
            self.spool.flush()
            self.requested += len(self._pending) // 2
            self._pending = []

    def wait(self) -> None:
        """All requested links exist (the child is done)."""
        try:
            self._send()
            self.spool.close()
            self.process.stdin.close()
            error = self.process.stderr.read().decode(errors="replace").strip()
            if self.process.wait() != 0:
                raise OSError(f"making image links failed: {error.splitlines()[-1] if error else '?'}")
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.spool.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool.name)


class _ImagePlacer:
    """Links or copies each image into images/ once, and lists it in images.sha256.

    In link mode the first pass requests a link for every kept image (`request_link`, made by a child process, see
    _LINKER); the location pass then lists the images it writes (`list_linked`) and names those dedup removed
    (`unlink_later`), whose links go once the child is done (`wait`).
    """

    def __init__(self, root: Path, mode: str, listing: _HashedWriter):
        self.root, self.mode, self.listing, self.placed = root, mode, listing, 0
        self.images_dir = os.path.join(os.path.abspath(root), IMAGES_DIR)
        os.makedirs(self.images_dir, exist_ok=True)
        self.linker = _Linker(self.images_dir) if mode == "link" else None
        self.requested = self.unlinked = 0
        self._unlink: list[str] = []

    @staticmethod
    def _name(sha256: str, uri: str) -> str:
        """`_image_name` without its folder, at a fraction of os.path.splitext's cost (twice per exported image):
        the suffix is what follows the basename's last dot, unless only dots precede that dot."""
        dot, slash = uri.rfind("."), uri.rfind("/")
        suffix = uri[dot:].lower() if dot > slash + 1 and uri[slash + 1 : dot].strip(".") else ""
        return f"{sha256}{suffix if 0 < len(suffix) <= 6 else '.jpg'}"

    def request_link(self, sha256: str, uri: str) -> None:
        # os.path.abspath is the identity on an already normal absolute path (the usual uri), and costs 6 µs
        normal = uri[:1] == "/" and "/." not in uri and "//" not in uri and uri[-1:] != "/"
        self.linker.link(uri if normal else os.path.abspath(local_path(uri)), self._name(sha256, uri))

    def list_linked(self, sha256: str, uri: str) -> str:
        """Relative path of an image whose link was requested; listed in images.sha256."""
        relative = f"{IMAGES_DIR}/{self._name(sha256, uri)}"
        self.listing.write_line(f"{sha256}  {relative}")
        self.placed += 1
        return relative

    def unlink_later(self, sha256: str, uri: str) -> None:
        self._unlink.append(self._name(sha256, uri))

    def wait(self) -> None:
        """All requested links exist, those of removed images are gone (errors raised here)."""
        if self.linker is not None:
            linker, self.linker = self.linker, None
            linker.wait()
            self.requested = linker.requested
            for name in self._unlink:
                os.unlink(os.path.join(self.images_dir, name))
            self.unlinked += len(self._unlink)
            self._unlink = []

    def linked_strays(self) -> int:
        """Links requested in the first pass that the location pass neither listed nor removed: images whose
        decision changed between the two passes (a concurrent review or quarantine). Rare; they are removed."""
        if self.mode != "link" or self.requested == self.placed + self.unlinked:
            return 0
        self.listing.flush()
        with open(self.listing.path, encoding="utf-8") as handle:
            listed = {line.rstrip("\n").split("  ", 1)[1].split("/", 1)[1] for line in handle}
        strays = [entry.name for entry in os.scandir(self.images_dir) if entry.name not in listed]
        for name in strays:
            os.unlink(os.path.join(self.images_dir, name))
        return len(strays)

    def close(self) -> None:
        if self.linker is not None:
            self.linker.kill()

    def place(self, sha256: str, uri: str) -> str | None:
        """Relative path of the image in the export; None when a copy's source is gone (caller quarantines)."""
        relative = _image_name(sha256, uri)
        target = os.path.join(self.root, relative)
        source = os.path.abspath(local_path(uri))
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


def _line(example: Example) -> str:
    """`Example.to_line()` without dataclasses.asdict's deep copies (10x faster; a test keeps them equal)."""
    data = dict(example.__dict__)
    data["answer"] = dict(example.answer.__dict__)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


_string = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


def _scalar(value: Any) -> str:
    """One JSON value spelled exactly as json.dumps spells it."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, ensure_ascii=False)


_PROMPT_JSON = _string(PROMPT)


def _location_line(sha256: str, image: str, country: str, country_code: str, city: str | None, reasons: str,
                   lat: float | None, lon: float | None, locatability: float, place: str, human_label: str | None) -> str:
    """`_line` of a location example, written from a template of its sorted keys: the location pass writes a
    line per image, and this is a third of json.dumps's cost (a test keeps the two equal). `country` and
    `country_code` are JSON already."""
    city_json = _string(city) if type(city) is str else _scalar(city)
    label = f'"human_label": {_scalar(human_label)}, ' if human_label else ""
    # finite floats (x - x == 0) are written as repr, like json.dumps; anything else goes through _scalar
    lat_json = float.__repr__(lat) if type(lat) is float and lat - lat == 0 else _scalar(lat)
    lon_json = float.__repr__(lon) if type(lon) is float and lon - lon == 0 else _scalar(lon)
    return (f'{{"answer": {{"city": {city_json}, "country": {country}, "reasons": {_string(reasons)}}}, '
            f'"city": {city_json}, "country_code": {country_code}, "id": {_string(sha256)}, '
            f'"image": {_string(image)}, "lat": {lat_json}, "lon": {lon_json}, '
            f'"meta": {{{label}"locatability": {_scalar(round(float(locatability), 6))}, "place": {_string(place)}}}, '
            f'"prompt": {_PROMPT_JSON}}}')


def _content_hash(parameters: dict[str, Any], files: dict[str, str]) -> str:
    canonical = json.dumps({"format": FORMAT_VERSION, "parameters": parameters, "files": files}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- building ---------------------------------------------------------------------------------------------------

class _EmbeddingLookup:
    """Vectors for images the location query found no stored vector for: open_clip computes (and stores) them when
    `version` is its own. `version` is the requested embedding version, else the configured open_clip model's
    (which loads the model)."""

    def __init__(self, session: Session, embedding_version: str | None):
        self.session, self.clip = session, None
        self.version = embedding_version or self._clip().version

    def _clip(self):
        if self.clip is None:
            from curation.clip import load_clip

            self.clip = load_clip()
        return self.clip

    def __call__(self, ids: list[int]) -> dict[int, np.ndarray]:
        from curation.embeddings import image_embeddings, stored_embeddings

        found = stored_embeddings(self.session, ids, self.version)
        missing = [i for i in ids if i not in found]
        if missing and self._clip().version == self.version:
            found.update(image_embeddings(self.session, missing, self.clip))
        return found


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
        builder = worker_id()
        try:
            export_id = store.begin_export(session, name, scorer_version, threshold,
                                           {**parameters, "images": images}, str(final_path.absolute()), builder,
                                           settings.lease_seconds, is_dead_local)
        except FileExistsError:
            raise UserError(f"export {name!r} already exists; exports are immutable, choose a new name") from None
        except store.ExportBusy as exc:
            raise UserError(str(exc)) from None

    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # ours now: a build that held the name died
    partial.mkdir(parents=True)
    try:
        with _heartbeat(session_url, export_id, builder, settings), session_scope(session_url) as session:
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


def _heartbeat(session_url: str | None, export_id: int, builder: str, settings):
    """While the export builds, its row says it is alive, so a second build of the name waits instead of taking
    it over. SQLite's single writer cannot beat during the build (see db.exports.begin_export)."""
    url = session_url or settings.database_url
    if url.startswith("sqlite"):
        return contextlib.nullcontext()

    def beat() -> None:
        with session_scope(url) as session:
            store.export_heartbeat(session, export_id, builder)

    return beating(beat, settings.heartbeat_seconds, f"export-{export_id}")


def _freeze(root: Path, images: str) -> None:
    """Exports are never modified: their files become read-only (links are left alone)."""
    paths = [root / MANIFEST, root / IMAGES_LISTING, *(location_file(root, s) for s in SPLITS), reasoning_file(root)]
    if images == "copy":
        paths += list((root / IMAGES_DIR).iterdir())
    for path in paths:
        path.chmod(0o444)


def _write(session: Session, export_id: int, name: str, root: Path, parameters: dict[str, Any],
           fractions: tuple[float, float, float], seed: int, images: str, h3_resolution: int,
           dedup_similarity: float | None, embedding_version: str | None) -> ExportResult:
    groups = store.create_group_table(session)
    listing = _HashedWriter(root / IMAGES_LISTING)
    placer = _ImagePlacer(root, images, listing)
    try:
        return _write_passes(session, export_id, name, root, parameters, fractions, seed, images, h3_resolution,
                             dedup_similarity, embedding_version, groups, placer, listing)
    finally:
        placer.close()


def _write_passes(session: Session, export_id: int, name: str, root: Path, parameters: dict[str, Any],
                  fractions: tuple[float, float, float], seed: int, images: str, h3_resolution: int,
                  dedup_similarity: float | None, embedding_version: str | None, groups, placer: _ImagePlacer,
                  listing: _HashedWriter) -> ExportResult:
    scorer_version, threshold = parameters["scorer_version"], parameters["threshold"]

    # pass 1: place of every kept image → temporary table, then places → splits; links requested (link mode)
    known_country: dict[str | None, bool] = {}
    city_places: dict[tuple[str | None, str], str | None] = {}

    def keyed_rows():
        for image_id, sha256, lat, lon, country_code, city, uri in store.stream_rows(
                session, decided_images(scorer_version, threshold, Image.uri, lean=True)):
            valid = known_country.get(country_code)
            if valid is None:
                valid = known_country[country_code] = is_country_code(country_code)
            if not valid:
                quarantine(session, "metadata", sha256, "unknown_country", f"country code {country_code!r}")
                continue
            if city:  # a place per (country, city): normalising the name once per city, not once per image
                key = city_places.get((country_code, city))
                if key is None:
                    key = city_places[(country_code, city)] = group_key(country_code, city, lat, lon, h3_resolution)
            else:
                key = group_key(country_code, city, lat, lon, h3_resolution)
            if linking:
                placer.request_link(sha256, uri)
            yield image_id, key

    linking = placer.linker is not None

    store.add_place_keys(session, groups, keyed_rows())
    store.analyze(session, groups)
    sizes = store.group_sizes(session, groups)
    split_of = assign_groups(sizes, fractions, seed)

    # pass 2: dedup one place at a time, write lines
    with small_products():
        location = _write_location(session, export_id, name, root, placer, split_of, groups, scorer_version,
                                   threshold, dedup_similarity if sizes else None, embedding_version)
    placer.wait()  # the reasoning pass may place the same images again: their links must exist first
    placer.linked_strays()
    reasoning, held_out = _write_reasoning(session, export_id, name, root, placer, split_of, h3_resolution)
    store.drop_group_table(session, groups)

    writers, removed, groups_per_split, per_country = location
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


def _write_location(session: Session, export_id: int, name: str, root: Path, placer: _ImagePlacer,
                    split_of: dict[str, str], groups, scorer_version: str, threshold: float,
                    dedup_similarity: float | None, embedding_version: str | None):
    """The kept images ordered by (place, sha256), near-duplicates removed per place, one line each in their
    place's split. Plain rows, a line template and COPY for the items: this loop runs once per exported image."""
    writers = {s: _HashedWriter(location_file(root, s)) for s in SPLITS}
    per_country: dict[str, Counter] = {s: Counter() for s in SPLITS}
    groups_per_split: Counter = Counter()
    removed = 0
    items: list[tuple[int, str, str, int]] = []
    appender = store.ItemAppender(session)
    linked = placer.linker is not None
    countries: dict[str, tuple[str, str, str]] = {}  # metadata code → (upper code, its JSON, country name's JSON)

    lookup, columns = None, [groups.c.group_key]
    if dedup_similarity is not None:
        lookup = _EmbeddingLookup(session, embedding_version)
        stored = aliased(ImageEmbedding, name="stored_embedding")
        columns.append(stored.vector)
        ordered = decided_images(scorer_version, threshold, *columns).outerjoin(
            stored, and_(stored.image_id == Image.id, stored.model_version == lookup.version))
    else:
        ordered = decided_images(scorer_version, threshold, *columns)
    ordered = ordered.join(groups, groups.c.image_id == Image.id).order_by(groups.c.group_key, Image.sha256)

    def duplicates_in(batch: list[tuple[str, list[Any]]]) -> set[int]:
        """Ids to drop in a batch of places: vectors joined from the store, the missing ones looked up together
        (open_clip only for images without one), and places of a single image skipped."""
        crowded = [rows for _, rows in batch if len(rows) > 1]
        missing = [r[0] for rows in crowded for r in rows if r[VECTOR] is None]
        found = lookup(missing) if missing else {}
        drop: set[int] = set()
        for rows in crowded:
            with_vectors = []
            for r in rows:
                vector = to_vector(r[VECTOR]) if r[VECTOR] is not None else found.get(r[0])
                if vector is not None:
                    with_vectors.append((r, vector))
            if len(with_vectors) > 1:
                drop |= near_duplicates([r[0] for r, _ in with_vectors], np.stack([v for _, v in with_vectors]),
                                        [r[LOCATABILITY] for r, _ in with_vectors], dedup_similarity,
                                        [r[1] for r, _ in with_vectors])
        return drop

    def flush(batch: list[tuple[str, list[Any]]]) -> None:
        nonlocal removed
        drop = duplicates_in(batch) if lookup is not None else set()
        removed += len(drop)
        for key, rows in batch:
            split_name = split_of[key]
            groups_per_split[split_name] += 1
            writer, country_counts = writers[split_name], per_country[split_name]
            for image_id, sha256, uri, lat, lon, code, city, locatability, ratios, human_label, *_ in rows:
                if image_id in drop:
                    if linked:
                        placer.unlink_later(sha256, uri)
                    continue
                relative = placer.list_linked(sha256, uri) if linked else placer.place(sha256, uri)
                if relative is None:
                    quarantine(session, "image", uri, "missing_at_export", f"export {name}")
                    continue
                country = countries.get(code)
                if country is None:
                    upper = code.upper()
                    country = countries[code] = (upper, _string(upper), _scalar(country_name(code)))
                writer.write_line(_location_line(sha256, relative, country[2], country[1], city,
                                                 evidence_sentence(ratios), lat, lon, locatability, key, human_label))
                country_counts[country[0]] += 1
                items.append((export_id, "location", split_name, image_id))
        appender.add(items)
        items.clear()

    batch: list[tuple[str, list[Any]]] = []
    batch_rows = 0
    try:
        for key, rows in groupby(store.stream_rows(session, ordered), key=itemgetter(PLACE)):
            rows = list(rows)
            batch.append((key, rows))
            batch_rows += len(rows)
            if batch_rows >= DEDUP_BATCH_ROWS:
                flush(batch)
                batch, batch_rows = [], 0
        if batch:
            flush(batch)
    except BaseException:
        appender.abort()
        raise
    appender.finish()
    return writers, removed, groups_per_split, per_country


def _write_reasoning(session: Session, export_id: int, name: str, root: Path, placer: _ImagePlacer,
                     split_of: dict[str, str], h3_resolution: int) -> tuple[_HashedWriter, int]:
    """Accepted clues with their images, none from a held-out place."""
    reasoning = _HashedWriter(reasoning_file(root))
    held_out = 0
    items: list[dict[str, Any]] = []
    pairs = store.accepted_clue_pairs().where(not_quarantined(), _drop_reviewed_as_unusable())
    for r in store.stream(session, pairs):
        key = group_key(r.country_code, r.city, r.lat, r.lon, h3_resolution)
        if split_of.get(key, "train") != "train":
            held_out += 1
            continue
        relative = placer.place(r.sha256, r.uri)
        if relative is None:
            quarantine(session, "image", r.uri, "missing_at_export", f"export {name}")
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
    return reasoning, held_out
