"""`ingest images` + `score` fill the store on SQLite and PostgreSQL; re-runs score nothing new; a corrupt file is
quarantined without losing its batch; rescoring from stored ratios runs no model and adds rows under a new version."""

import json

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from curation.locatability import locatability
from curation.score_store import carry_over_scores, pending_image_ids, rescore_from_ratios, score_images
from curation.scoring import Scorer, decide
from db.engine import session_scope
from db.models import Image, ImageEmbedding, Quarantine, Score, ScorerVersion
from geocurate.cli import app
from geocurate.settings import reload_settings
from tests.scoring_images import write_images


@pytest.fixture
def demo_env(monkeypatch):
    for key, value in dict(DEMO_MODELS="true", SAM_POINTS_PER_SIDE="4", SCORE_DTYPE="float32",
                           SCORE_BATCH_SIZE="3").items():
        monkeypatch.setenv(f"GEOCURATE_{key}", value)
    return reload_settings()


def run(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_ingest_then_score_fills_the_store_once(store_url, demo_env, tmp_path):
    paths = write_images(tmp_path / "images", 5)
    assert "added 5" in run("ingest", "images", str(tmp_path / "images"))
    paths[3].write_bytes(paths[3].read_bytes()[:100])  # corrupted after ingest: found at scoring time

    output = run("score")
    assert "scored 4, skipped 0, quarantined 1" in output
    with session_scope(store_url) as session:
        statuses = dict(session.execute(select(Image.uri, Image.status)).tuples().all())
        scores = session.scalars(select(Score)).all()
        version = scores[0].scorer_version
        assert session.get(ScorerVersion, version).params["segmenter"] == "sam"
        assert session.scalar(select(func.count()).select_from(ImageEmbedding)) == 4
        assert session.scalar(select(Quarantine.reason)) == "unreadable_image"
        assert pending_image_ids(session, version) == []
    assert statuses[str(paths[3].resolve())] == "quarantined"
    assert sorted(statuses.values()).count("scored") == 4
    for score in scores:
        assert sum(score.class_ratios.values()) <= 1 + 1e-9
        assert score.locatability == pytest.approx(locatability(score.class_ratios), abs=1e-12)
        assert score.decision == decide(score.locatability, demo_env)

    assert "scored 0, skipped 0, quarantined 0" in run("score")  # re-run: nothing new
    assert "added 0, duplicates 4" in run("ingest", "images", str(tmp_path / "images"))

    scorer = Scorer.from_settings(demo_env)  # a batch delivered twice is skipped, not scored again
    with session_scope(store_url) as session:
        ids = list(session.scalars(select(Image.id).where(Image.status == "scored")))
        again = score_images(session, scorer, ids)
        assert (again.scored, again.skipped) == (0, 4)
        assert session.scalar(select(func.count()).select_from(Score)) == 4


def test_changed_setting_scores_again_under_a_new_version(store_url, demo_env, tmp_path, monkeypatch):
    write_images(tmp_path / "images", 2)
    run("ingest", "images", str(tmp_path / "images"))
    run("score")
    monkeypatch.setenv("GEOCURATE_CLIP_PROMPT_TEMPLATE", "a photo of a {name}")
    reload_settings()
    assert "scored 2" in run("score")
    with session_scope(store_url) as session:
        assert session.scalar(select(func.count(func.distinct(Score.scorer_version)))) == 2
        assert session.scalar(select(func.count()).select_from(Score)) == 4


def test_changed_threshold_carries_earlier_scores_over_without_segmenting_again(store_url, demo_env, tmp_path,
                                                                               monkeypatch):
    write_images(tmp_path / "images", 3)
    run("ingest", "images", str(tmp_path / "images"))
    run("score")
    with session_scope(store_url) as session:
        [(old_version, old_params)] = session.execute(select(ScorerVersion.version, ScorerVersion.params)).all()
        old = {s.image_id: s for s in session.scalars(select(Score))}

    def no_segmenting(*args, **kwargs):
        raise AssertionError("a new threshold must not segment the images again")

    import curation.segmenters.sam

    monkeypatch.setattr(curation.segmenters.sam.SamSegmenter, "segment", no_segmenting)
    monkeypatch.setenv("GEOCURATE_THRESHOLD", "0.2")
    monkeypatch.setenv("GEOCURATE_REVIEW_BAND_LOW", "0.15")
    monkeypatch.setenv("GEOCURATE_REVIEW_BAND_HIGH", "0.25")
    settings = reload_settings()
    assert "carried over 3 from stored class ratios, scored 0" in run("score")
    assert "carried over 0 from stored class ratios, scored 0" in run("score")  # nothing left to carry
    with session_scope(store_url) as session:
        [(new_version, new_params)] = session.execute(select(ScorerVersion.version, ScorerVersion.params)
                                                      .where(ScorerVersion.version != old_version)).all()
        new = {s.image_id: s for s in session.scalars(select(Score).where(Score.scorer_version == new_version))}
        with pytest.raises(ValueError, match="not the ones of scorer"):
            carry_over_scores(session, new_version, new_params, [0.5] * 150)
    assert new_params == {**old_params, "threshold": 0.2, "review_band": [0.15, 0.25]}
    assert set(new) == set(old)
    for image_id, score in new.items():
        assert score.locatability == pytest.approx(old[image_id].locatability, abs=1e-12)
        assert score.decision == decide(score.locatability, settings)


def test_score_image_prints_json_lines(demo_env, tmp_path):
    good = write_images(tmp_path, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    lines = [json.loads(line) for line in run("score-image", str(good[0]), str(bad), str(good[1])).splitlines()
             if line.startswith("{")]
    by_path = {line["path"]: line for line in lines}
    assert "unreadable image" in by_path[str(bad)]["error"]
    for path in good:
        assert set(by_path[str(path)]) >= {"locatability", "top_classes", "decision", "scorer_version"}


def test_rescore_from_stored_ratios_runs_no_model(store_url, demo_env, tmp_path, monkeypatch):
    write_images(tmp_path / "images", 4)
    run("ingest", "images", str(tmp_path / "images"))
    run("score")
    with session_scope(store_url) as session:
        old = {s.image_id: s for s in session.scalars(select(Score))}
    source = next(iter(old.values())).scorer_version

    def no_model(*args, **kwargs):
        raise AssertionError("rescoring must not load or run a model")

    import curation.clip
    import curation.segmenters.maskformer
    import curation.segmenters.sam

    monkeypatch.setattr(curation.clip, "build_clip", no_model)
    monkeypatch.setattr(curation.segmenters.sam, "load_sam", no_model)
    monkeypatch.setattr(curation.segmenters.sam.SamSegmenter, "segment", no_model)
    monkeypatch.setattr(curation.segmenters.maskformer, "load_segmentation_model", no_model)

    weights = [0.9 if i % 2 else 0.2 for i in range(150)]
    with session_scope(store_url) as session:
        result = rescore_from_ratios(session, weights, source, threshold=0.45, review_band=(0.35, 0.55))
    assert result.rows == 4 and result.scorer_version != source
    with session_scope(store_url) as session:
        again = rescore_from_ratios(session, weights, source, threshold=0.45, review_band=(0.35, 0.55))
        new = {s.image_id: s for s in session.scalars(select(Score).where(Score.scorer_version == again.scorer_version))}
        params = session.get(ScorerVersion, again.scorer_version).params
    assert again == type(result)(result.scorer_version, 0)  # same request, same version, nothing added
    assert params["threshold"] == 0.45 and params["sam"] == "demo:tiny:seed0"
    for image_id, score in new.items():
        expected = locatability(old[image_id].class_ratios, weights)
        assert score.locatability == pytest.approx(expected, abs=1e-12)
        assert score.class_ratios == old[image_id].class_ratios
        band = "review" if 0.35 <= expected < 0.55 else ("keep" if expected >= 0.45 else "drop")
        assert score.decision == band

    with session_scope(store_url) as session:  # ranges on parallel connections (PostgreSQL) give the same rows
        split = rescore_from_ratios(session, [0.3] * 150, source, parallel=3)
    with session_scope(store_url) as session:
        values = session.scalars(select(Score.locatability).where(Score.scorer_version == split.scorer_version)).all()
    assert split.rows == 4 and sorted(values) == pytest.approx(
        sorted(locatability(s.class_ratios, [0.3] * 150) for s in old.values()), abs=1e-12)

    weights_file = tmp_path / "weights.json"
    weights_file.write_text(json.dumps([0.1] * 150))
    output = run("rescore", "--from", source, "--weights", str(weights_file))
    assert "4 rows rescored" in output
