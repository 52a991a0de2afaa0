"""Pending review is a policy: an image in its version's review band whose review is still open is left out of an
export under `exclude` (the default) and decided by its score under `score`; the manifest says how many waited.
And an export training is asked to use must give every stage an example, or it fails before anything is written."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from curation.decisions import decided_images, final_decision
from curation.export import ExportParams, build_export
from curation.export.readiness import EmptyExport
from db.engine import session_scope
from db.models import Clue, CluePair, Export, ReviewTask
from geocurate.cli import app
from geocurate.settings import get_settings
from tests.test_versions import seed_version

# threshold 0.4, band [0.3, 0.5)
SCORES = [0.2, 0.32, 0.35, 0.42, 0.45, 0.48, 0.6, 0.9]


def seed_reviews(url: str, ids: list[int]) -> None:
    """0.32 and 0.45 wait for a reviewer (pending, conflicted); 0.35 was answered locatable; 0.48's task was
    retired unanswered (not waiting any more); 0.42 and 0.6 have no task."""
    with session_scope(url) as s:
        s.add_all([ReviewTask(item_kind="image", item_id=ids[1], state="pending"),
                   ReviewTask(item_kind="image", item_id=ids[4], state="conflicted"),
                   ReviewTask(item_kind="image", item_id=ids[2], state="done", final_label="locatable"),
                   ReviewTask(item_kind="image", item_id=ids[5], state="retired")])


def exported_scores(result) -> list[float]:
    lines = [json.loads(line) for split in ("train", "val", "test")
             for line in (result.path / "location" / f"{split}.jsonl").read_text().splitlines()]
    return sorted(round(line["meta"]["locatability"], 2) for line in lines)


def params(version: str, name: str, **kwargs) -> ExportParams:
    return ExportParams.from_settings(get_settings(), name, scorer_version=version, dedup=False, **kwargs)


def test_exclude_leaves_waiting_images_out_and_score_lets_the_score_decide(store_url):
    version, ids = seed_version(store_url, SCORES)
    seed_reviews(store_url, ids)
    excluded = build_export(params(version, "exclude"), store_url)
    scored = build_export(params(version, "score", pending="score"), store_url)

    # 0.45 waits for its reviewer: left out; 0.35 was rescued by a human; 0.48's retired task waits for nobody
    assert exported_scores(excluded) == [0.35, 0.42, 0.48, 0.6, 0.9]
    assert exported_scores(scored) == [0.35, 0.42, 0.45, 0.48, 0.6, 0.9]
    assert excluded.counts["pending_review"] == {"policy": "exclude", "review_band": [0.3, 0.5], "pending": 2,
                                                 "left_out": 2, "kept_by_score": 0, "dropped_by_score": 0}
    assert scored.counts["pending_review"] == {"policy": "score", "review_band": [0.3, 0.5], "pending": 2,
                                               "left_out": 0, "kept_by_score": 1, "dropped_by_score": 1}
    manifest = json.loads((excluded.path / "manifest.json").read_text())
    assert manifest["parameters"]["pending"] == "exclude" and manifest["counts"]["pending_review"]["pending"] == 2
    assert excluded.content_hash != scored.content_hash


def test_the_sql_rule_and_the_python_rule_agree_on_pending_images(store_url):
    version, ids = seed_version(store_url, SCORES)
    seed_reviews(store_url, ids)
    waiting = {ids[1], ids[4]}
    with session_scope(store_url) as s:
        rows = s.execute(decided_images(version, 0.4, kept_only=False, exclude_pending=(0.3, 0.5))).all()
    assert len(rows) == len(SCORES)
    for row in rows:
        assert bool(row.kept) == final_decision(row.locatability, row.human_label, 0.4, pending=row.id in waiting)
    assert [bool(r.kept) for r in sorted(rows, key=lambda r: r.locatability)] == \
        [False, False, True, True, False, True, True, True]


def test_training_on_an_export_without_examples_fails_before_anything_is_written(store_url, tmp_path):
    version, ids = seed_version(store_url, [0.1, 0.35, 0.45], threshold=0.4, band=(0.3, 0.5))
    with session_scope(store_url) as s:
        s.add(ReviewTask(item_kind="image", item_id=ids[2], state="pending"))
    exports = get_settings().export_dir

    result = CliRunner().invoke(app, ["export", "empty", "--scorer-version", version, "--train"])
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    assert "no usable example for stage location" in error[0] and "threshold 0.4" in error[0]
    assert "scored 3, kept 0, pending review 1, quarantined 0" in error[0]
    assert "lower the threshold" in error[0] and "review the 1 pending images" in error[0]
    assert not exports.exists() or not any(exports.iterdir())  # no folder, no half-written .partial
    with session_scope(store_url) as s:
        assert s.scalars(select(Export)).all() == []

    # without --train the empty export is written, with a warning line per empty stage
    plain = CliRunner().invoke(app, ["export", "empty", "--scorer-version", version])
    assert plain.exit_code == 0, plain.output
    assert (exports / "empty" / "manifest.json").is_file()
    assert "warning: export 'empty' has no usable example for stage location" in plain.output
    assert "pending review: 1 images in the band wait for a reviewer: 1 left out" in plain.output


def test_the_reasoning_stage_is_required_only_when_it_is_all_that_is_trained(store_url):
    """Training skips an empty reasoning stage when the location stage follows (it starts from the base model),
    so only a reasoning-only request fails for want of clue pairs."""
    version, ids = seed_version(store_url, [0.6, 0.7, 0.8, 0.9])
    with pytest.raises(EmptyExport, match="stage reasoning: 0 clue pairs .* clue pairs 0\\); ingest clue texts"):
        build_export(params(version, "no-clues", train_stages=("reasoning",)), store_url)
    both = build_export(params(version, "both", train_stages=("reasoning", "location")), store_url)
    assert both.counts["reasoning"]["train"] == 0 and both.counts["location"]["train"] > 0
    with session_scope(store_url) as s:
        clue = Clue(sha256="c" * 64, text="Polish road signs", country="PL", status="accepted")
        s.add(clue)
        s.flush()
        s.add_all([CluePair(clue_id=clue.id, image_id=i, method="given") for i in ids])
    built = build_export(params(version, "with-clues", train_stages=("reasoning",)), store_url)
    assert built.counts["reasoning"]["train"] > 0
