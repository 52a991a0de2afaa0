"""Leak-free splits: near-duplicates filed under different cities (or spellings of one city) never land in two
splits, city spellings meet in one place, and a misspelled city in a known city's streets joins it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.dedup import duplicate_groups, lsh_recall
from curation.export.duplicates import Duplicates
from curation.splits import PlaceGraph, assign_places, cell_key, city_key, group_key, split_of_image
from db import models as m
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.scores import add_scores
from curation.embeddings import store_embeddings
from geocurate.countries import canonical_city
from geocurate.export_format import MANIFEST, SPLITS, reasoning_file
from tests.test_export import EMBEDDING_VERSION, all_examples, export, read_examples, seed_store, sha

KRAKOW = (50.06, 19.94)


@pytest.mark.parametrize("spelling", ["Kraków", "Cracow", "Krakow", "krakow", "KRAKAU", "Краков", " Kraków "])
def test_city_spellings_are_one_place(spelling):
    assert city_key("PL", spelling) == "city:PL:krakow"


def test_canonical_names_stay_within_a_country_and_keep_unknown_names():
    assert canonical_city("München", "DE") == canonical_city("Munich", "DE") == "munich"
    assert canonical_city("Danzig", "PL") == "gdansk"
    assert canonical_city("Springfield Heights", "PL") == "springfield heights"  # unknown: its own key
    assert canonical_city("Krakow", "DE") == "krakow"  # not a German city: no alias applies, the name stays
    # a name in a script normalise() empties keeps a key of its own instead of the empty key every such city shared
    assert canonical_city("Хрустальный", "PL") == "хрустальный" != canonical_city("Зелёный", "PL")


def test_a_misspelled_city_in_a_known_citys_cell_joins_its_split():
    graph = PlaceGraph()
    cell = cell_key(*KRAKOW, 5)
    graph.join("city:PL:krakow", cell)
    graph.join("city:PL:krakuw old town", cell)  # a typo GeoNames does not know, same streets
    graph.join("city:DE:berlin", cell_key(52.52, 13.40, 5))
    sizes = {"city:PL:krakow": 50, "city:PL:krakuw old town": 3, "city:DE:berlin": 40, cell: 2}
    for seed in range(20):
        split_of = assign_places(sizes, graph, (0.5, 0.25, 0.25), seed)
        assert split_of["city:PL:krakow"] == split_of["city:PL:krakuw old town"] == split_of[cell]
    # every place of the graph gets a split, the cells cities are tied to included
    assert set(assign_places(sizes, graph, (0.5, 0.25, 0.25), 0)) == {*sizes, cell_key(52.52, 13.40, 5)}
    # a reasoning image under a spelling no exported image uses still finds its streets' split through its cell
    split_of = {"city:PL:krakow": "test", cell: "test"}
    assert split_of_image(split_of, "PL", "Stare Miasto", *KRAKOW, 5) == "test"
    assert split_of_image(split_of, "PL", "Cracow", 10.0, 10.0, 5) == "test"
    assert split_of_image(split_of, "PL", "Elsewhere", 10.0, 10.0, 5) is None
    assert group_key("PL", None, *KRAKOW, 5) == cell


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_global_search_finds_copies_in_other_places_and_nothing_false():
    rng = np.random.default_rng(3)
    n = 4000
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    copies = np.arange(1, n, 40)
    vectors[copies] = vectors[copies - 1] + 0.02 * rng.normal(size=(len(copies), 64)).astype(np.float32)
    vectors = _unit(vectors)
    places = rng.integers(0, 50, n)
    places[copies] = (places[copies - 1] + 1) % 50  # every copy filed under another place
    found = duplicate_groups(vectors, np.ones(n, dtype=bool), places, 0.95)
    truth = np.argwhere(np.triu(vectors @ vectors.T > 0.95, k=1))
    assert {tuple(p) for p in found.pairs.tolist()} == {tuple(p) for p in truth.tolist()}
    assert len(truth) == len(copies)
    assert 0.85 < found.recall < 1.0 and lsh_recall(0.99, n) > 0.9999


def test_rows_without_a_vector_are_never_grouped():
    vectors = _unit(np.ones((3, 8)))
    vectors[2] = 0.0
    found = duplicate_groups(vectors, np.array([True, True, False]), np.array([0, 1, 1]), 0.95)
    assert found.pairs.tolist() == [[0, 1]] and found.labels[0] == found.labels[1] != found.labels[2]


def test_a_near_duplicate_pair_across_splits_fails_the_export():
    duplicates = Duplicates(removed=set(), searched=True, stats={"groups": 1},
                            _pairs=np.array([[0, 1]]), _ids=np.array([10, 11]), _places=np.array([0, 1]),
                            _place_keys=["city:PL:krakow", "city:DE:berlin"])
    with pytest.raises(RuntimeError, match="cross splits"):
        duplicates.report({"city:PL:krakow": "train", "city:DE:berlin": "test"})
    assert duplicates.report({"city:PL:krakow": "val", "city:DE:berlin": "val"})["cross_split_after_resolution"] == 0
    duplicates.removed = {11}  # resolved: one image of the pair is left out
    assert duplicates.cross_split({"city:PL:krakow": "train", "city:DE:berlin": "test"}) == 0


def plant(url: str, ids: dict[str, int]) -> dict[str, int]:
    """Near-copies of seed_store's images filed elsewhere: under other spellings of their city, under other cities
    and countries, and one misspelled city and one city-less image in Kraków's streets. Returns name → image id."""
    with session_scope(url) as s:
        vector = {n: np.frombuffer(s.get(m.ImageEmbedding, (ids[sha(n)], EMBEDDING_VERSION)).vector, np.float32)
                  for n in (0, 8, 9, 24)}
    rows = {  # name: (source image, noise, country, city, lat, lon, locatability)
        "cracow": (0, 0.0, "PL", "Cracow", 50.07, 19.95, 0.99),  # identical to img0 (Kraków), other spelling
        "krakau": (None, 0.0, "PL", "KRAKAU", 50.05, 19.93, 0.9),  # a distinct image under a third spelling
        "berlin-as-paris": (8, 0.01, "FR", "Paris", 48.86, 2.35, 0.95),  # img8 is in Berlin
        "berlin-as-lyon": (8, 0.02, "FR", "Lyon", 45.76, 4.84, 0.3),
        "berlin9-as-recife": (9, 0.0, "BR", "Recife", -8.05, -34.9, 0.1),
        "tokyo-as-helsinki": (24, 0.01, "FI", None, 60.0, 25.0, 0.97),  # no city: an H3 cell far away
        "typo-in-krakow": (None, 0.0, "PL", "Krakuw Stare Miasto", 50.061, 19.941, 0.8),
        "cell-in-krakow": (None, 0.0, "PL", None, 50.062, 19.942, 0.8),
    }
    rng = np.random.default_rng(7)
    images, scores, vectors = [], [], {}
    for k, (name, (source, noise, country, city, lat, lon, loc)) in enumerate(rows.items()):
        images.append(dict(sha256=sha(500 + k), uri=f"/data/planted-{k}.jpg", width=640, height=480, lat=lat,
                           lon=lon, country_code=country, city=city, source="t"))
        if source is None:
            v = rng.normal(size=16).astype(np.float32)
        else:
            v = vector[source] + noise * np.ones(16, np.float32)
        vectors[name] = v / np.linalg.norm(v)
    with session_scope(url) as s:
        add_images(s, images)
        new_ids = ids_by_sha(s, [row["sha256"] for row in images])
        planted = {name: new_ids[sha(500 + k)] for k, name in enumerate(rows)}
        add_scores(s, [dict(image_id=planted[name], scorer_version="v1", locatability=rows[name][6],
                            class_ratios={"6": 0.4}, decision="keep") for name in rows])
        store_embeddings(s, {planted[name]: vectors[name] for name in rows}, EMBEDDING_VERSION)
        clue = m.Clue(sha256=sha(2000), text="Bollards and yellow-backed signs.", country="PL", status="accepted")
        s.add(clue)
        s.flush()  # paired with copies that dedup removes and with the images that stay
        s.add_all([m.CluePair(clue_id=clue.id, image_id=image_id, method="given")
                   for image_id in [ids[sha(n)] for n in (0, 1, 8, 9, 24)] + list(planted.values())])
    return planted


def test_planted_near_duplicates_never_cross_a_split(store_url):
    ids = seed_store(store_url)
    planted = plant(store_url, ids)
    sha_of = {**{sha(n): n for n in range(40)}, **{sha(500 + k): name for k, name in enumerate(planted)}}
    with session_scope(store_url) as s:
        stored = {row.image_id: np.frombuffer(row.vector, np.float32) for row in s.query(m.ImageEmbedding)}
    id_of_sha = {**ids, **{sha(500 + k): i for k, i in enumerate(planted.values())}}
    vector_of_sha = {h: stored[i] for h, i in id_of_sha.items()}
    vector_of = {name: vector_of_sha[h] for h, name in sha_of.items() if h in vector_of_sha}
    for seed in range(4):
        result = export(store_url, f"leak-free-{seed}", threshold=0.0, seed=seed, split=(0.5, 0.25, 0.25))
        examples = all_examples(result.path)
        split_of = {sha_of[ex.id]: s for s in SPLITS for ex in examples[s]}
        place_of = {sha_of[ex.id]: ex.meta["place"] for s in SPLITS for ex in examples[s]}
        exported = list(split_of)
        # kept copies: img0 (0.2) loses to "cracow" (0.99); img8 (~0.33) beats "berlin-as-lyon" (0.3) but loses to
        # "berlin-as-paris" (0.95); img9 beats "berlin9-as-recife" (0.1); img24 loses to "tokyo-as-helsinki"
        assert not {0, 8, "berlin-as-lyon", "berlin9-as-recife", 24} & set(exported), exported
        assert {"cracow", "berlin-as-paris", 9, "tokyo-as-helsinki"} <= set(exported)
        # no near-duplicate pair left in the export, so none across splits
        vectors = np.stack([stored[id_of_sha[sha(n) if isinstance(n, int) else sha(500 + list(planted).index(n))]]
                            for n in exported])
        close = np.argwhere(np.triu(vectors @ vectors.T > 0.95, k=1))
        assert not [(exported[i], exported[j]) for i, j in close if split_of[exported[i]] != split_of[exported[j]]]
        assert len(close) == 0
        # spellings meet, and a typo or a city-less image in Kraków's streets goes where Kraków goes
        assert place_of["cracow"] == place_of["krakau"] == place_of[1] == "city:PL:krakow"
        assert split_of["typo-in-krakow"] == split_of["cell-in-krakow"] == split_of[1] == split_of["krakau"]
        assert place_of["typo-in-krakow"] == "city:PL:krakuw stare miasto"
        # nor does reasoning train on a near-copy of a val/test image (a removed copy whose twin is evaluated)
        evaluated = np.stack([vector_of[sha_of[ex.id]] for s in ("val", "test") for ex in examples[s]])
        reasoning = read_examples(reasoning_file(result.path))
        assert reasoning and result.counts["reasoning"]["held_out"] > 0
        for ex in reasoning:
            image = next(v for key, v in vector_of_sha.items() if key.startswith(ex.id.split("-")[1]))
            assert float((evaluated @ image).max()) <= 0.95, ex.id
        manifest = json.loads((result.path / MANIFEST).read_text())
        report = manifest["counts"]["near_duplicates"]
        # groups: {img0, cracow} (one place now), {img8, paris, lyon}, {img9, recife}, {img24, helsinki}
        assert report["groups"] == 4 and report["images_in_groups"] == 9
        assert report["groups_across_places"] == 3 and report["removed"] == 5 == result.removed_duplicates
        assert report["cross_split_after_resolution"] == 0 and report["resolution"].startswith("reduced")
        assert report["images_compared"] == len(ids) + len(planted)
        assert sum(len(v) for v in examples.values()) == len(ids) + len(planted) - 5


def test_manifest_says_when_near_duplicates_were_not_searched(store_url):
    seed_store(store_url)
    result = export(store_url, "kept-copies", dedup=False)
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["counts"]["near_duplicates"] == {"searched": False}
