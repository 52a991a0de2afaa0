"""Exports are reproducible artefacts: the same store and parameters must give the same bytes whatever the code's
layout. The hashes below were recorded from the export code before it became a package; a change to any of them is
a change of the export format (or of what gets selected), which must be deliberate: a new FORMAT_VERSION."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from sqlalchemy import select

from curation.export import ExportParams, build_export
from db import models as m
from db.engine import session_scope
from db.quarantine import quarantine
from geocurate.export_format import MANIFEST
from geocurate.settings import get_settings
from tests.test_export import EMBEDDING_VERSION, seed_store, sha

# manifest.json's `content_hash`; the same on SQLite and PostgreSQL
LINKED_HASH = "2e2fa16c1f393a30f8b29b8b6db3c3459017365c0d634d2ff3b2ff1ac52c5a08"
COPIED_HASH = "1ae597c00b0e622d00f71c702cfb764421d6f7f7e530e8f6c48e624319f55bd4"
# sha256 of: the manifest without its creation time, every symlink's target (or copy's bytes), the export's items
LINKED_DIGESTS = {"manifest": "4005b67110d82943b80a263c7ae10f30db5f2f8244b59ca937ef68047f7e9712",
                  "links": "c310c3ab5d64129fd87b7e3036104682667740968f38ff15ba3ffa764047fa97",
                  "items": "dc3ab1c277142064372f9e8c6798b267a8d05f2024c5c512904aa1b5890e9cba"}
COPIED_DIGESTS = {"manifest": "babcbfee9c0914eabf52dcf2a3ce2c64a3a59a9276f1a486f4a9b9f5f4dd5073",
                  "copies": "0a5005b0f50211475db195a720b339d5135e2c3187c67562f6fcd46aeef982a6",
                  "items": "93c946ba8d3a06eb56a388a564fe7dd637f81fc8ce1c8859a277cfd4450a1d7f"}


def golden_store(url: str, image_dir: Path) -> None:
    """seed_store plus every path the export takes: reviews both ways (one with a corrected country), quarantine by
    row, sha256 and path, two planted near-copies, clues paired within and across countries (one paired with a
    human-dropped image, one rejected), and images on disk for the copy mode (all but two, which go missing)."""
    ids = seed_store(url)
    with session_scope(url) as s:
        s.add_all([m.ReviewTask(item_kind="image", item_id=ids[sha(0)], state="done", final_label="locatable",
                                final_country="CZ"),
                   m.ReviewTask(item_kind="image", item_id=ids[sha(37)], state="done", final_label="not_locatable"),
                   m.ReviewTask(item_kind="image", item_id=ids[sha(35)], state="done", final_label="unusable"),
                   m.ReviewTask(item_kind="image", item_id=ids[sha(34)], state="pending", final_label="unusable")])
        s.get(m.Image, ids[sha(30)]).status = "quarantined"
        quarantine(s, "image", sha(31), "corrupt image")
        quarantine(s, "image", "/data/33.png", "corrupt image")
        base = np.frombuffer(s.get(m.ImageEmbedding, (ids[sha(27)], EMBEDDING_VERSION)).vector, np.float32)
        for n, noise in ((25, 0.01), (26, 0.02)):
            v = base + noise * np.ones_like(base)
            s.get(m.ImageEmbedding, (ids[sha(n)], EMBEDDING_VERSION)).vector = (v / np.linalg.norm(v)).tobytes()
        polish = m.Clue(sha256=sha(1000), text="Yellow-backed signs and \"Polish\" text: ą, ł.", country="PL",
                        status="accepted")
        german = m.Clue(sha256=sha(1001), text="Black-and-white bollards.", country="DE", status="accepted")
        rejected = m.Clue(sha256=sha(1002), text="nice view", country="PL", status="rejected")
        s.add_all([polish, german, rejected])
        s.flush()
        s.add_all([m.CluePair(clue_id=polish.id, image_id=ids[sha(k)], method="given") for k in range(8)])
        s.add_all([m.CluePair(clue_id=german.id, image_id=ids[sha(k)], method="given") for k in (1, 9, 13, 37)])
        s.add(m.CluePair(clue_id=rejected.id, image_id=ids[sha(0)], method="given"))
    image_dir.mkdir()
    with session_scope(url) as s:
        for image in s.scalars(select(m.Image)):
            suffix = os.path.splitext(image.uri)[1]
            path = image_dir / f"{image.sha256[:8]}{suffix}"
            if image.sha256 not in (sha(2), sha(36)):
                path.write_bytes(image.sha256.encode())
            image.uri = str(path)


def build(url: str, out_dir: Path, name: str, **parameters):
    params = ExportParams.from_settings(get_settings(), name, scorer_version="v1", out_dir=out_dir,
                                        embedding_version=EMBEDDING_VERSION, **parameters)
    return build_export(params, url)


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def digests(url: str, path: Path, export_id: int, image_dir: Path) -> dict[str, str]:
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["created_at"]
    with session_scope(url) as s:
        items = s.execute(select(m.ExportItem.dataset, m.ExportItem.split, m.Image.sha256, m.Clue.sha256)
                          .join(m.Image, m.Image.id == m.ExportItem.image_id)
                          .outerjoin(m.Clue, m.Clue.id == m.ExportItem.clue_id)
                          .where(m.ExportItem.export_id == export_id)).all()
    found = {"manifest": digest(manifest), "items": digest(sorted((tuple(r) for r in items), key=str))}
    images = sorted((path / "images").iterdir())
    if all(p.is_symlink() for p in images):
        found["links"] = digest([(p.name, os.path.relpath(os.readlink(p), image_dir)) for p in images])
    else:
        found["copies"] = digest([(p.name, p.read_text()) for p in images])
    return found


def test_export_bytes_are_unchanged(store_url, tmp_path):
    golden_store(store_url, tmp_path / "images")
    out = tmp_path / "out"
    linked = build(store_url, out, "golden-link", threshold=0.4, seed=1, split=(0.6, 0.2, 0.2))
    # copy mode runs second: images missing on disk are quarantined by it (and the link export has none missing)
    copied = build(store_url, out, "golden-copy", threshold=0.3, seed=2, images="copy", dedup=False)
    found = {"linked": (linked.content_hash, digests(store_url, linked.path, linked.export_id, tmp_path / "images")),
             "copied": (copied.content_hash, digests(store_url, copied.path, copied.export_id, tmp_path / "images"))}
    assert found == {"linked": (LINKED_HASH, LINKED_DIGESTS), "copied": (COPIED_HASH, COPIED_DIGESTS)}, found
    # the store exercised what it is meant to: dedup, held-out reasoning pairs, images gone missing at export
    assert linked.removed_duplicates == 2 and copied.counts["reasoning"]["held_out"] > 0
    assert linked.counts["near_duplicates"]["groups"] == 1 and linked.counts["near_duplicates"]["removed"] == 2
    with session_scope(store_url) as s:
        missing = s.scalars(select(m.Quarantine.reference).where(m.Quarantine.reason == "missing_at_export")).all()
    assert missing and all(Path(uri).parent == tmp_path / "images" for uri in missing)
