"""A scorer version owns its decision parameters: threshold, review band and class weights are stored with it and
applied by routing, review task texts, threshold reports and exports of that version, whatever the environment
says. Weights are written by ADE20K class name; `versions list` shows every version."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from curation.decisions import DecisionRule, rule_of
from curation.locatability import REFERENCE_WEIGHTS, SHORT_NAMES, changed_classes, weights_digest, weights_from_json
from curation.score_store import current_version, rescore_from_ratios
from curation.scoring import version_of
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.models import ReviewTask, Score, ScorerVersion
from db.scores import add_scores, register_scorer_version, scorer_weights
from geocurate.cli import app
from geocurate.settings import get_settings

ROAD = SHORT_NAMES.index("road")  # reference weight 1.0: a road fraction r scores r


def base_params(threshold: float = 0.4, band: tuple[float, float] = (0.3, 0.5),
                weights=REFERENCE_WEIGHTS) -> dict:
    return {"segmenter": "sam", "sam": "demo:tiny:seed0", "clip": "tiny", "num_classes": 150,
            "weights": weights_digest(weights), "threshold": threshold, "review_band": list(band)}


def seed_version(url: str, scores: list[float], threshold: float = 0.4, band: tuple[float, float] = (0.3, 0.5),
                 first: int = 0) -> tuple[str, list[int]]:
    """Images in Kraków scored `scores` (class ratios: that fraction of road) under a registered version whose
    params carry the threshold and band; returns (version, image ids in order)."""
    params = base_params(threshold, band)
    version = version_of(params)
    rows = [dict(sha256=hashlib.sha256(f"img{first + i}".encode()).hexdigest(), uri=f"/data/{first + i}.jpg",
                 width=640, height=480, lat=50.06 + i * 0.01, lon=19.94, country_code="PL",
                 city=f"Town{(first + i) % 5}", source="t") for i in range(len(scores))]
    with session_scope(url) as s:
        register_scorer_version(s, version, params, REFERENCE_WEIGHTS)
        add_images(s, rows)
        ids = ids_by_sha(s, [r["sha256"] for r in rows])
        ordered = [ids[r["sha256"]] for r in rows]
        rule = DecisionRule(threshold, *band)
        add_scores(s, [dict(image_id=i, scorer_version=version, locatability=v, class_ratios={str(ROAD): v},
                            decision=rule.decide(v)) for i, v in zip(ordered, scores)])
    return version, ordered


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


# --- weights by class name ----------------------------------------------------------------------------------------

def test_weights_by_class_name_override_the_reference_and_lists_stay_accepted():
    weights = weights_from_json({"road": 0.5, "Sky": 0.02, "signboard, sign": 0.9})
    assert changed_classes(weights) == {"sky": 0.02, "road": 0.5, "signboard": 0.9}
    assert weights[SHORT_NAMES.index("building")] == REFERENCE_WEIGHTS[SHORT_NAMES.index("building")]
    assert weights_from_json([0.1] * 150) == (0.1,) * 150
    assert weights_from_json({"weights": list(REFERENCE_WEIGHTS)}) == REFERENCE_WEIGHTS  # the shipped file's form


def test_the_scorer_reads_a_weights_file_by_class_name(tmp_path):
    from curation.locatability import load_weights

    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"sky": 0.02}))
    weights = load_weights(get_settings().model_copy(update={"class_weights_path": path}))
    assert changed_classes(weights) == {"sky": 0.02}
    path.write_text(json.dumps({"skye": 0.02}))
    with pytest.raises(ValueError, match=f"class weights file {path}: unknown ADE20K class 'skye'; did you mean 'sky'"):
        load_weights(get_settings().model_copy(update={"class_weights_path": path}))


@pytest.mark.parametrize("data, message", [
    ({"rode": 1.0}, "unknown ADE20K class 'rode'; did you mean 'road'"),
    ({"ground": 1.0}, "'ground' names 2 ADE20K classes"),
    ({"road": 1.0, "route": 0.5}, "'route' and 'road' name the same class"),
    ({"road": "high"}, "weight of 'road' is 'high'"),
    ([1.0] * 149, "expected 150 weights"),
    ("road", "expected a JSON object of weights by ADE20K class name"),
])
def test_bad_weights_are_refused_with_what_is_wrong(data, message):
    with pytest.raises(ValueError, match="w.json: " + message.replace("(", r"\(")):
        weights_from_json(data, origin="w.json")


# --- the version's rule -------------------------------------------------------------------------------------------

def test_rescore_stores_threshold_band_and_weights_on_the_version(store_url, tmp_path):
    source, ids = seed_version(store_url, [0.1, 0.32, 0.45, 0.8])
    weights_file = tmp_path / "w.json"
    weights_file.write_text(json.dumps({"road": 0.5}))
    out = cli("rescore", "--from", source, "--threshold", "0.35", "--band", "0.2", "0.3", "--weights",
              str(weights_file))
    new = out.split()[1].rstrip(":")
    with session_scope(store_url) as s:
        rule = rule_of(s, new)
        stored = scorer_weights(s, new)
        rows = dict(s.execute(select(Score.image_id, Score.decision).where(Score.scorer_version == new)).tuples().all())
        values = dict(s.execute(select(Score.image_id, Score.locatability)
                                .where(Score.scorer_version == new)).tuples().all())
    assert rule == DecisionRule(0.35, 0.2, 0.3) and changed_classes(stored) == {"road": 0.5}
    # road weight halved: 0.1 -> 0.05 drop, 0.32 -> 0.16 drop, 0.45 -> 0.225 review, 0.8 -> 0.4 keep
    assert [rows[i] for i in ids] == ["drop", "drop", "review", "keep"]
    assert [values[i] for i in ids] == pytest.approx([0.05, 0.16, 0.225, 0.4])

    # without --weights the source version's stored weights are kept; a bad band is refused in one line
    with session_scope(store_url) as s:
        again = rescore_from_ratios(s, None, new, threshold=0.3)
        assert changed_classes(scorer_weights(s, again.scorer_version)) == {"road": 0.5}
        assert rule_of(s, again.scorer_version) == DecisionRule(0.3, 0.2, 0.3)
    result = CliRunner().invoke(app, ["rescore", "--from", source, "--band", "0.5", "0.3"])
    assert result.exit_code != 0 and "low is above high" in str(result.exception or result.output)


def test_versions_list_shows_each_version_and_the_current_one(store_url, tmp_path, monkeypatch):
    source, _ = seed_version(store_url, [0.1, 0.45, 0.8])
    weights_file = tmp_path / "w.json"
    weights_file.write_text(json.dumps({"sky": 0.02}))
    with session_scope(store_url) as s:
        tuned = rescore_from_ratios(s, weights_from_json({"sky": 0.02}), source, threshold=0.35,
                                    review_band=(0.25, 0.45)).scorer_version
    out = cli("versions", "list")
    lines = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") > 6}
    assert set(lines) == {source, tuned}
    assert "0.35" in lines[tuned] and "[0.25, 0.45)" in lines[tuned] and "sky 0.02" in lines[tuned]
    assert "reference" in lines[source] and "[0.3, 0.5)" in lines[source]
    assert "sam demo:tiny:seed0" in lines[source] and lines[source].rstrip(" │").endswith("3")
    # current for the default settings (threshold 0.4, band [0.3, 0.5), reference weights): the source
    assert lines[source].split("│")[1].strip() == "*" and lines[tuned].split("│")[1].strip() == ""
    assert f"current for these settings: {source}" in out

    monkeypatch.setenv("GEOCURATE_THRESHOLD", "0.35")
    monkeypatch.setenv("GEOCURATE_REVIEW_BAND_LOW", "0.25")
    monkeypatch.setenv("GEOCURATE_REVIEW_BAND_HIGH", "0.45")
    monkeypatch.setenv("GEOCURATE_CLASS_WEIGHTS_PATH", str(weights_file))
    from geocurate.settings import reload_settings

    reload_settings()
    assert f"current for these settings: {tuned}" in cli("versions", "list")
    with session_scope(store_url) as s:
        assert current_version(s, "maskformer", DecisionRule(0.35, 0.25, 0.45), weights_from_json({"sky": 0.02})) \
            is None


def test_routing_uses_the_versions_band_not_the_environments(store_url, monkeypatch):
    from labeling.routing import route_for_review

    version, ids = seed_version(store_url, [0.25, 0.35, 0.45, 0.55, 0.65], threshold=0.6, band=(0.5, 0.7))
    monkeypatch.setenv("GEOCURATE_REVIEW_BAND_LOW", "0.3")  # the environment's band would queue 0.35 and 0.45
    monkeypatch.setenv("GEOCURATE_REVIEW_BAND_HIGH", "0.5")
    from geocurate.settings import reload_settings

    reload_settings()
    with session_scope(store_url) as s:
        summary = route_for_review(s, version, get_settings())
        tasks = s.scalars(select(ReviewTask).order_by(ReviewTask.item_id)).all()
    assert summary.images_queued == 2 and [t.item_id for t in tasks] == [ids[3], ids[4]]
    assert all("review band [0.5, 0.7)" in t.reason and t.scorer_version == version for t in tasks)
    assert [t.priority for t in tasks] == pytest.approx([0.5, 0.5])  # 0.55 and 0.65 are both 0.05 from 0.6


def test_review_task_text_shows_the_versions_threshold(store_url, monkeypatch):
    from labeling.push import image_tasks

    version, ids = seed_version(store_url, [0.37], threshold=0.35, band=(0.3, 0.45))
    settings = get_settings().model_copy(update={"label_studio_image_url_prefix": "http://images.example"})
    assert settings.threshold == 0.4
    with session_scope(store_url) as s:
        s.add(ReviewTask(item_kind="image", item_id=ids[0], state="pending", priority=0.5))
        s.flush()
        tasks, bad = image_tasks(s, list(s.scalars(select(ReviewTask))), settings)
    assert not bad
    assert "machine locatability 0.370 (kept at ≥ 0.35)" in tasks[0]["data"]["machine_score"]
    # at the version's threshold 0.37 is kept, so the machine's pre-answer is "locatable"
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["locatable"]


def test_export_applies_the_versions_threshold(store_url, tmp_path):
    from curation.export import ExportParams, build_export
    from curation.export.readiness import usable_counts

    version, ids = seed_version(store_url, [0.2, 0.3, 0.36, 0.5, 0.7, 0.9], threshold=0.35, band=(0.3, 0.35))
    params = ExportParams.from_settings(get_settings(), "v35", scorer_version=version, dedup=False)
    result = build_export(params, store_url)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["threshold"] == 0.35 and manifest["parameters"]["review_band"] == [0.3, 0.35]
    assert sum(result.counts["location"].values()) == 4  # 0.36, 0.5, 0.7, 0.9: not the environment's 0.4 (3)
    with session_scope(store_url) as s:
        usable = usable_counts(s, params.resolved(s))
        assert s.get(ScorerVersion, version).weights == list(REFERENCE_WEIGHTS)
    assert (usable.scored, usable.kept, usable.pending, usable.quarantined) == (6, 4, 0, 0)


def test_threshold_report_states_the_versions_rule(store_url):
    from curation.thresholds import collect
    from curation.thresholds.render import marked_thresholds, version_line

    version, ids = seed_version(store_url, [0.1, 0.3, 0.4, 0.5, 0.7], threshold=0.35, band=(0.25, 0.45))
    with session_scope(store_url) as s:
        s.add_all([ReviewTask(item_kind="image", item_id=ids[1], state="pending"),
                   ReviewTask(item_kind="image", item_id=ids[2], state="done", final_label="not_locatable")])
        s.flush()
        stats = collect(s, version)
    assert stats.rule == DecisionRule(0.35, 0.25, 0.45)
    assert stats.kept_at_rule == 2 and stats.pending == 1  # 0.5, 0.7 (0.4 dropped by its reviewer); 0.3 waits
    assert 0.35 in marked_thresholds(stats)
    assert version_line(stats) == ("This version keeps at ≥ 0.35 (2 images) and sends [0.25, 0.45) to review "
                                   "(1 still waiting for a reviewer).")
