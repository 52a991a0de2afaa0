"""Exports: the final decision (human label wins both ways, quarantine never exported), geo-aware splits,
near-duplicate removal, reproducible content hashes, immutable folders, store records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from curation.decisions import decided_images, final_decision
from curation.embeddings import store_embeddings
from curation.export import ExportParams, build_export, evidence_sentence
from db import models as m
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.quarantine import quarantine
from db.scores import add_scores
from geocurate.errors import UserError
from geocurate.settings import get_settings
from geocurate.export_format import MANIFEST, PROMPT, SPLITS, Example, location_file, reasoning_file

EMBEDDING_VERSION = "test-emb"
CITIES = [("PL", "Kraków", 50.06, 19.94), ("PL", "Gdańsk", 54.35, 18.65), ("DE", "Berlin", 52.52, 13.40),
          ("DE", "München", 48.14, 11.58), ("FR", "Paris", 48.86, 2.35), ("FR", "Lyon", 45.76, 4.84),
          ("JP", "Tokyo", 35.68, 139.69), ("BR", "Recife", -8.05, -34.9)]
PER_CITY = 4


def read_examples(path: Path) -> list[Example]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [Example.from_line(line) for line in handle if line.strip()]


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def seed_store(url: str, version: str = "v1") -> dict[str, int]:
    """8 cities × 4 images, plus 6 images without a city spread over 3 far-apart places (2 per place); scores
    rise with n so every threshold keeps a different set. Each image has a distinct random embedding."""
    rows, scores = [], []
    n = 0
    for country, city, lat, lon in CITIES:
        for k in range(PER_CITY):
            rows.append(dict(sha256=sha(n), uri=f"/data/{n}.jpg", width=640, height=480, lat=lat + k * 0.01,
                             lon=lon + k * 0.01, country_code=country, city=city, source="t"))
            n += 1
    for lat, lon in [(60.0, 25.0), (-33.9, 18.4), (40.7, -74.0)]:
        for k in range(2):
            rows.append(dict(sha256=sha(n), uri=f"/data/{n}.png", width=640, height=480, lat=lat + k * 0.001,
                             lon=lon, country_code={60.0: "FI", -33.9: "ZA", 40.7: "US"}[lat], city=None, source="t"))
            n += 1
    with session_scope(url) as s:
        add_images(s, rows)
        ids = ids_by_sha(s, [r["sha256"] for r in rows])
        rng = np.random.default_rng(0)
        vectors = {}
        for i, row in enumerate(rows):
            image_id = ids[row["sha256"]]
            scores.append(dict(image_id=image_id, scorer_version=version, locatability=0.2 + 0.6 * i / len(rows),
                               class_ratios={"6": 0.4, "43": 0.05, "2": 0.3}, decision="keep"))
            v = rng.normal(size=16).astype(np.float32)
            vectors[image_id] = v / np.linalg.norm(v)
        add_scores(s, scores)
        store_embeddings(s, vectors, EMBEDDING_VERSION)
    return {r["sha256"]: ids[r["sha256"]] for r in rows}


def export(url: str, name: str, **kwargs):
    kwargs.setdefault("embedding_version", EMBEDDING_VERSION)
    kwargs.setdefault("threshold", 0.4)
    return build_export(ExportParams.from_settings(get_settings(), name, **kwargs), url)


def all_examples(path: Path):
    return {s: read_examples(location_file(path, s)) for s in SPLITS}


def test_final_decision_rule():
    assert final_decision(0.9, None, 0.4) and not final_decision(0.1, None, 0.4)
    assert final_decision(0.4, None, 0.4)
    assert final_decision(0.05, "locatable", 0.4) and not final_decision(0.95, "unusable", 0.4)
    assert not final_decision(0.95, "not_locatable", 0.4) and not final_decision(0.95, None, 0.4, quarantined=True)


def test_sql_decision_agrees_with_python(store_url):
    ids = seed_store(store_url)
    with session_scope(store_url) as s:
        s.add_all([m.ReviewTask(item_kind="image", item_id=ids[sha(0)], state="done", final_label="locatable"),
                   m.ReviewTask(item_kind="image", item_id=ids[sha(37)], state="done", final_label="unusable"),
                   m.ReviewTask(item_kind="image", item_id=ids[sha(36)], state="pending", final_label="unusable")])
    with session_scope(store_url) as s:
        rows = s.execute(decided_images("v1", 0.5, kept_only=False)).all()
    assert len(rows) == len(ids)
    for row in rows:
        assert bool(row.kept) == final_decision(row.locatability, row.human_label, 0.5), row


def test_export_writes_the_training_format_and_manifest(store_url):
    seed_store(store_url)
    result = export(store_url, "first")
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["content_hash"] == result.content_hash and manifest["threshold"] == 0.4
    for relative, digest in manifest["files"].items():
        assert hashlib.sha256((result.path / relative).read_bytes()).hexdigest() == digest
    examples = all_examples(result.path)
    total = sum(len(v) for v in examples.values())
    assert total == sum(manifest["counts"]["location"].values()) > 0
    example = examples["train"][0]
    assert example.prompt == PROMPT and example.image.startswith("images/") and example.answer.reasons
    assert (result.path / example.image).is_symlink()
    assert example.answer.country in {"Poland", "Germany", "France", "Japan", "Brazil", "Finland", "South Africa",
                                      "United States"}
    per_country = sum(sum(c.values()) for c in manifest["counts"]["per_country"].values())
    assert per_country == total
    with session_scope(store_url) as s:
        record = s.scalar(select(m.Export).where(m.Export.name == "first"))
        assert record.status == "done" and record.content_hash == result.content_hash
        items = s.scalar(select(func.count()).select_from(m.ExportItem).where(m.ExportItem.export_id == record.id))
    assert items == total


def test_threshold_selects_and_no_place_is_in_two_splits(store_url):
    ids = seed_store(store_url)
    result = export(store_url, "geo", threshold=0.0, dedup=False)
    examples = all_examples(result.path)
    assert sum(len(v) for v in examples.values()) == len(ids)
    place_split: dict[str, str] = {}
    for split_name, rows in examples.items():
        for ex in rows:
            place = ex.meta["place"]
            assert place_split.setdefault(place, split_name) == split_name, place
            if ex.city:
                plain = ex.city.lower().replace("ó", "o").replace("ń", "n")
                plain = {"münchen": "munich"}.get(plain, plain)  # GeoNames' primary name: one key per city
                assert place == f"city:{ex.country_code}:{plain}"
            else:
                assert place.startswith("h3:")
    assert all(examples[s] for s in SPLITS), {s: len(v) for s, v in examples.items()}
    cities = {s: {ex.city for ex in v if ex.city} for s, v in examples.items()}
    assert not (cities["train"] & cities["val"]) and not (cities["train"] & cities["test"])
    assert not (cities["val"] & cities["test"])


def test_same_inputs_same_hash_and_threshold_changes_it(store_url):
    seed_store(store_url)
    a = export(store_url, "a", seed=3)
    b = export(store_url, "b", seed=3)
    assert a.content_hash == b.content_hash
    for s in SPLITS:
        assert location_file(a.path, s).read_bytes() == location_file(b.path, s).read_bytes()
    assert export(store_url, "c", seed=3, threshold=0.45).content_hash != a.content_hash
    assert export(store_url, "d", seed=3, threshold=0.401).content_hash != a.content_hash  # same rows, other parameters
    assert export(store_url, "e", seed=4).content_hash != a.content_hash


def test_quarantined_images_never_appear(store_url):
    ids = seed_store(store_url)
    with session_scope(store_url) as s:
        s.get(m.Image, ids[sha(30)]).status = "quarantined"
        quarantine(s, "image", sha(31), "corrupt image")
        quarantine(s, "image", "/data/33.png", "corrupt image")
        s.add(m.ReviewTask(item_kind="image", item_id=ids[sha(29)], state="done", final_label="locatable"))
    s29_kept = export(store_url, "q", threshold=0.0, dedup=False)
    exported = {ex.id for rows in all_examples(s29_kept.path).values() for ex in rows}
    assert sha(29) in exported
    assert not exported & {sha(30), sha(31), sha(33)}
    assert len(exported) == len(ids) - 3


def test_human_label_overrides_score_both_ways(store_url):
    ids = seed_store(store_url)
    low, high = sha(0), sha(len(ids) - 1)  # lowest and highest locatability
    with session_scope(store_url) as s:
        s.add(m.ReviewTask(item_kind="image", item_id=ids[low], state="done", final_label="locatable",
                           final_country="CZ"))
        s.add(m.ReviewTask(item_kind="image", item_id=ids[high], state="done", final_label="not_locatable"))
    result = export(store_url, "human", dedup=False)
    exported = {ex.id: ex for rows in all_examples(result.path).values() for ex in rows}
    assert low in exported and high not in exported
    assert exported[low].country_code == "CZ" and exported[low].answer.country == "Czechia"
    assert exported[low].meta["human_label"] == "locatable"


def test_near_duplicates_removed_keeping_the_most_locatable(store_url):
    ids = seed_store(store_url)
    # images 0..3 are one city: make 1 and 2 near-copies of 3 (the most locatable of the four)
    with session_scope(store_url) as s:
        base = np.frombuffer(s.get(m.ImageEmbedding, (ids[sha(3)], EMBEDDING_VERSION)).vector, np.float32)
        for n, noise in ((1, 0.01), (2, 0.02)):
            v = base + noise * np.ones_like(base)
            s.get(m.ImageEmbedding, (ids[sha(n)], EMBEDDING_VERSION)).vector = (v / np.linalg.norm(v)).tobytes()
    result = export(store_url, "dedup", threshold=0.0)
    exported = {ex.id for rows in all_examples(result.path).values() for ex in rows}
    assert result.removed_duplicates == 2 == result.counts["removed_duplicates"]
    assert sha(3) in exported and sha(0) in exported and not exported & {sha(1), sha(2)}


def test_export_names_are_immutable(store_url):
    seed_store(store_url)
    first = export(store_url, "once")
    with pytest.raises(UserError, match="already exists"):
        export(store_url, "once", threshold=0.1)
    assert json.loads((first.path / MANIFEST).read_text())["threshold"] == 0.4
    with pytest.raises(UserError, match="split"):
        export(store_url, "bad", split="0.5/0.5/0.5")


def test_reasoning_file_has_accepted_clues_outside_held_out_places(store_url):
    ids = seed_store(store_url)
    with session_scope(store_url) as s:
        accepted = m.Clue(sha256=sha(1000), text="Yellow-backed signs and Cyrillic-free Polish text.", country="PL",
                          status="accepted")
        rejected = m.Clue(sha256=sha(1001), text="nice view", country="PL", status="rejected")
        s.add_all([accepted, rejected])
        s.flush()
        s.add_all([m.CluePair(clue_id=accepted.id, image_id=ids[sha(k)], method="given") for k in range(10)])
        s.add(m.CluePair(clue_id=rejected.id, image_id=ids[sha(0)], method="given"))
        # a reviewer dropped image 8 and image 9 is quarantined: the decision rule leaves both out of reasoning too
        s.add(m.ReviewTask(item_kind="image", item_id=ids[sha(8)], state="done", final_label="unusable"))
        quarantine(s, "image", sha(9), "corrupt image")
    result = export(store_url, "reasoning", threshold=0.0, dedup=False)
    location = all_examples(result.path)
    held_out = {ex.id for s in ("val", "test") for ex in location[s]}
    examples = read_examples(reasoning_file(result.path))
    assert examples and all(ex.answer.reasons == accepted.text for ex in examples)
    assert all(ex.answer.country == "Poland" for ex in examples)
    image_shas = {ex.image.split("/")[1].split(".")[0] for ex in examples}
    assert not image_shas & held_out and not image_shas & {sha(8), sha(9)}
    assert len(examples) + result.counts["reasoning"]["held_out"] == 8


def test_evidence_sentence_names_top_classes():
    sentence = evidence_sentence({"6": 0.36, "1": 0.2, "2": 0.33, "43": 0.01})
    assert "road" in sentence
    assert evidence_sentence({}).startswith("The scene shows little")


def test_fast_line_writer_matches_the_format():
    from curation.export.answers import example_line
    from geocurate.export_format import Answer, Example

    example = Example(id="a", image="images/a.jpg", prompt=PROMPT, answer=Answer("Poland", "Kraków", "signs"),
                      country_code="PL", city="Kraków", lat=50.0, lon=19.9, meta={"place": "city:PL:krakow"})
    assert example_line(example) == example.to_line()


def test_dedup_computes_missing_embeddings_and_reuses_stored_ones(sqlite_store, tmp_path, monkeypatch):
    """Demo open_clip: a one-pixel edit is a near-copy; a stored vector is used as is, never recomputed."""
    from PIL import Image as PILImage

    from curation.clip import load_clip
    from geocurate.settings import reload_settings

    monkeypatch.setenv("GEOCURATE_DEMO_MODELS", "1")
    monkeypatch.setenv("GEOCURATE_DEDUP_SIMILARITY", "0.99")
    settings = reload_settings()
    rng = np.random.default_rng(0)
    a = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    b = a.copy()
    b[0, 0] = 0
    c = np.zeros((64, 64, 3), np.uint8)
    c[:, :32] = 255
    rows = []
    for n, pixels in enumerate((a, b, c)):
        path = tmp_path / f"{n}.png"
        PILImage.fromarray(pixels).save(path)
        rows.append(dict(sha256=sha(500 + n), uri=str(path), lat=50.0, lon=19.9, country_code="PL", city="Kraków"))
    clip = load_clip(settings)
    with session_scope(sqlite_store) as s:
        add_images(s, rows)
        ids = ids_by_sha(s, [r["sha256"] for r in rows])
        a_id, b_id, c_id = (ids[r["sha256"]] for r in rows)
        add_scores(s, [dict(image_id=i, scorer_version="v1", locatability=loc, class_ratios={"6": loc}, decision="keep")
                       for i, loc in ((a_id, 0.8), (b_id, 0.9), (c_id, 0.7))])
        # c's stored vector says "copy of b": the export must reuse it rather than embed c's pixels
        b_vector = clip.encode_images([PILImage.fromarray(b)])[0]
        store_embeddings(s, {c_id: b_vector}, clip.version)
    result = build_export(ExportParams.from_settings(settings, "clip-dedup", threshold=0.0, split=(1.0, 0.0, 0.0)),
                          sqlite_store)
    exported = [ex.id for ex in read_examples(location_file(result.path, "train"))]
    assert exported == [sha(501)] and result.removed_duplicates == 2
    with session_scope(sqlite_store) as s:
        stored = s.scalars(
            select(m.ImageEmbedding.image_id).where(m.ImageEmbedding.model_version == clip.version)).all()
    assert set(stored) == {a_id, b_id, c_id}


def test_location_line_template_matches_the_format():
    """The location pass writes lines from a template; it must spell every value as Example.to_line does."""
    from curation.export.answers import location_line
    from geocurate.export_format import Answer, Example

    cases = [("Kraków", 50.06, 19.94, 0.1234567891, "locatable", 'city:PL:krakow'),
             (None, -8.0, 1e-7, 1.0, None, "h3:85"),
             ('Quote " back\\slash\ttab', None, None, 0.5, "", "city:FR:x"),
             ("東京", 35.0, 139.0, float("nan"), None, "city:JP:?")]
    for city, lat, lon, loc, label, place in cases:
        example = Example(id="f" * 64, image=f"images/{'f' * 64}.jpg", prompt=PROMPT,
                          answer=Answer("Japan", city, "Main geographic evidence: road."), country_code="JP",
                          city=city, lat=lat, lon=lon,
                          meta={"locatability": round(float(loc), 6), "place": place,
                                **({"human_label": label} if label else {})})
        line = location_line("f" * 64, f"images/{'f' * 64}.jpg", '"Japan"', '"JP"', city,
                              "Main geographic evidence: road.", lat, lon, loc, place, label)
        assert line == example.to_line()


def test_failed_links_fail_the_export(tmp_path):
    """Links are made by a child process: its errors must reach the caller."""
    from curation.export.placement import ImagePlacer

    placer = ImagePlacer(tmp_path / "x", "link")
    (tmp_path / "x" / "images" / "ab.jpg").write_text("in the way")
    placer.request_link("ab", "/data/ab.jpg")
    with pytest.raises(OSError, match="making image links failed"):
        placer.wait()
    placer.close()


def test_a_name_being_built_is_refused_and_a_dead_builders_name_is_taken_over(store_url, tmp_path):
    """Two `export NAME` at once: the second is refused with a message and the first's folder is untouched.
    A build whose process is gone (or whose heartbeat stopped, on PostgreSQL) no longer holds the name."""
    import os
    import socket
    import subprocess
    import sys

    from db import exports as store
    from db.heartbeat import is_dead_local, worker_id

    seed_store(store_url)
    with session_scope(store_url) as s:  # this process is building "busy"; its partial folder holds work in progress
        store.begin_export(s, "busy", "v1", 0.4, {}, str(tmp_path / "exports" / "busy"), worker_id(), 60,
                           is_dead_local)
    work = tmp_path / "exports" / ".busy.partial"
    work.mkdir(parents=True)
    (work / "in-progress").write_text("x")
    with pytest.raises(UserError, match=rf"export 'busy' is being built by {socket.gethostname()}:{os.getpid()}"):
        export(store_url, "busy")
    assert (work / "in-progress").read_text() == "x"

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with session_scope(store_url) as s:  # the builder of "orphan" died (same host, its pid is gone)
        store.begin_export(s, "orphan", "v1", 0.4, {}, str(tmp_path / "exports" / "orphan"),
                           f"{socket.gethostname()}:{gone.stdout.strip()}", 60, is_dead_local)
    result = export(store_url, "orphan")
    assert result.path.is_dir() and not (tmp_path / "exports" / ".orphan.partial").exists()
    with session_scope(store_url) as s:
        assert s.scalar(select(m.Export.status).where(m.Export.name == "orphan")) == "done"


@pytest.mark.postgres
def test_a_stale_heartbeat_frees_the_name_on_postgresql(pg_store, tmp_path):
    from datetime import timedelta

    from db import exports as store

    seed_store(pg_store)
    with session_scope(pg_store) as s:  # a builder on another machine that stopped beating two minutes ago
        export_id = store.begin_export(s, "remote", "v1", 0.4, {}, str(tmp_path / "exports" / "remote"),
                                       "other-host:1", 60, lambda holder: False)
        s.get(m.Export, export_id).heartbeat_at = m.utcnow() - timedelta(seconds=30)
    with pytest.raises(UserError, match="is being built by other-host:1"):
        export(pg_store, "remote")
    with session_scope(pg_store) as s:
        s.get(m.Export, export_id).heartbeat_at = m.utcnow() - timedelta(seconds=120)
    assert export(pg_store, "remote").path.is_dir()


def test_a_city_name_at_the_column_limit_exports(store_url):
    """The place key is `city:CC:<name>`, longer than the 200-character city column: it used to overflow the
    export's place table on PostgreSQL and block every later export."""
    seed_store(store_url)
    with session_scope(store_url) as s:
        s.query(m.Image).filter(m.Image.city == "Recife").update({m.Image.city: "R" * 200})  # kept: high scores
    result = export(store_url, "long-city")
    places = {ex.meta["place"] for examples in all_examples(result.path).values() for ex in examples}
    assert f"city:BR:{'r' * 200}" in places


def test_params_come_from_settings_and_are_checked():
    settings = get_settings()
    params = ExportParams.from_settings(settings, "p", split="0.5/0.25/0.25", dedup=False)
    # the threshold and band are the scorer version's, resolved when the build starts, never the environment's
    assert (params.threshold, params.review_band, params.pending) == (None, None, "exclude")
    assert (params.out_dir, params.images, params.h3_resolution) == (
        settings.export_dir, settings.export_images, settings.h3_resolution)
    assert params.split == (0.5, 0.25, 0.25) and params.dedup_similarity is None
    assert params.clip.clip_model == settings.clip_model and params.lease_seconds == settings.lease_seconds
    for bad, message in (({"name": ".hidden"}, "export name"), ({"threshold": 1.5}, "threshold"),
                         ({"images": "hardlink"}, "images must be link or copy"), ({"split": "1/1/1"}, "split"),
                         ({"pending": "wait"}, "pending must be one of exclude, score")):
        with pytest.raises(UserError, match=message):
            ExportParams.from_settings(settings, **{"name": "ok", **bad})


def test_the_export_reads_its_params_not_the_settings(store_url, tmp_path, monkeypatch):
    """Workers and the CLI hand the export its values: nothing in the build may fall back on the process's settings
    (here the settings would say H3 resolution 5 and the default export folder)."""
    import h3

    import geocurate.settings

    seed_store(store_url)
    params = ExportParams(name="values", threshold=0.0, out_dir=tmp_path / "elsewhere", images="link",
                          dedup_similarity=0.99, h3_resolution=3, lease_seconds=60, heartbeat_seconds=15,
                          embedding_version=EMBEDDING_VERSION)

    def no_settings():
        raise AssertionError("the export library read the settings")

    with monkeypatch.context() as patched:
        patched.setattr(geocurate.settings, "get_settings", no_settings)
        result = build_export(params, store_url)
    assert result.path == tmp_path / "elsewhere" / "values"
    cells = {ex.meta["place"][3:] for rows in all_examples(result.path).values() for ex in rows
             if ex.meta["place"].startswith("h3:")}
    assert cells and {h3.get_resolution(cell) for cell in cells} == {3}


def test_rows_are_read_by_column_name():
    """A selection whose columns are not the row type's fails the export instead of shifting its values."""
    from sqlalchemy import select as select_

    from curation.export.selection import LocatedImage, named_rows

    shifted = select_(m.Image.id, m.Image.sha256, m.Image.lon, m.Image.lat, m.Image.country_code, m.Image.city,
                      m.Image.uri)
    with pytest.raises(RuntimeError, match="LocatedImage columns"):
        named_rows(None, shifted, LocatedImage)


def test_image_names_keep_the_source_suffix_as_splitext_does():
    import os

    from curation.export.placement import image_name

    for uri in ("/a/b.JPG", "/a/b.jpeg", "/a/.hidden", "/a/..b.png", "/a.d/b", "/a/b.", "/a/b.toolongsuffix",
                "/a/...", "b.webp", "/a/b.tar.gz", "/a/b c.Png"):
        suffix = os.path.splitext(uri)[1].lower()
        assert image_name("f" * 64, uri) == "f" * 64 + (suffix if 0 < len(suffix) <= 6 else ".jpg"), uri


def test_a_build_leaves_the_garbage_collector_as_it_found_it(sqlite_store):
    """The build sets the process's older objects aside from the cyclic collector (gc.freeze) and gives them back
    after; objects a process froze itself (a pre-fork server) stay frozen."""
    import gc

    seed_store(sqlite_store)
    assert gc.get_freeze_count() == 0
    export(sqlite_store, "gc-1")
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        export(sqlite_store, "gc-2")
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
