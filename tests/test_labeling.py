"""Labeling without a Label Studio server: interfaces, routing (the local review queue), decisions, agreement,
retries against an unreachable server, and the webhook's secret check."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from db.engine import session_scope
from db.models import Annotation, Clue, ReviewTask
from db.review import AnnotationRecord, human_labels, replace_annotations, set_decision
from geocurate.settings import get_settings, reload_settings
from labeling.configs import CLUE_REVIEW, IMAGE_REVIEW, INTERFACES, span_results, validate
from labeling.pull import resolve
from labeling.routing import closeness
from labeling.stats import agreement, cohen_kappa, fleiss_kappa, review_stats
from tests.labeling_seed import SCORER, route, seed_clues, seed_images


@pytest.mark.parametrize("kind", sorted(INTERFACES))
def test_review_interfaces_parse_and_accept_their_predictions(kind):
    validate(INTERFACES[kind])


def test_a_prediction_with_a_choice_the_interface_lacks_is_refused():
    from label_studio_sdk.label_interface import LabelInterface

    bogus = {"result": [{"from_name": "locatability", "to_name": "image", "type": "choices",
                         "value": {"choices": ["maybe"]}}]}
    assert LabelInterface(IMAGE_REVIEW.xml).validate_prediction(bogus, return_errors=True)


def test_annotator_result_reads_back_as_store_label_and_country():
    result = [IMAGE_REVIEW.choice_result("unusable"), IMAGE_REVIEW.country_result(" Poland ")]
    assert IMAGE_REVIEW.read_result(result) == ("unusable", "Poland")
    assert CLUE_REVIEW.read_result([CLUE_REVIEW.choice_result("no_geo_clue")]) == ("no_geo_clue", None)


def test_recognised_places_become_span_preannotations_and_bad_spans_are_dropped():
    text = "Bollards like in Kraków"
    spans = span_results(CLUE_REVIEW, text, [{"start": 17, "end": 23, "label": "city"},
                                             {"start": 40, "end": 50, "label": "city"}, "junk"])
    assert [(s["value"]["text"], s["value"]["labels"]) for s in spans] == [("Kraków", ["city"])]


def test_closeness_is_one_at_the_threshold_and_falls_to_the_band_edges():
    settings = get_settings()
    assert closeness(0.4, settings) == 1.0
    assert closeness(0.3, settings) == pytest.approx(0.0)
    assert closeness(0.45, settings) == pytest.approx(0.5)
    assert closeness(0.35, settings) == pytest.approx(0.5)


def test_routing_queues_the_band_and_review_clues_once(store_url, tmp_path):
    ids = seed_images(store_url, tmp_path / "img", [0.1, 0.3, 0.39, 0.41, 0.499, 0.5, 0.9])
    clue_ids = seed_clues(store_url, ["Bollards like in Kraków", "gg wp"])
    seed_clues(store_url, ["Sure thing in Kraków, Poland"], status="accepted")
    with session_scope(store_url) as session:
        from labeling.routing import route_for_review

        first = route_for_review(session, SCORER, get_settings())
        again = route_for_review(session, SCORER, get_settings())
    assert (first.images_queued, first.clues_queued) == (4, 2)
    assert (again.images_queued, again.clues_queued, again.images_in_band) == (0, 0, 4)
    with session_scope(store_url) as session:
        rows = session.scalars(select(ReviewTask).order_by(ReviewTask.priority.desc(), ReviewTask.id)).all()
        images = [r.item_id for r in rows if r.item_kind == "image"]
        assert images == [ids[3], ids[2], ids[4], ids[1]]  # 0.41, 0.39, 0.499, 0.3: nearest the threshold first
        assert sorted(r.item_id for r in rows if r.item_kind == "clue") == clue_ids
        assert all(r.state == "pending" and r.ls_task_id is None for r in rows)


def test_majority_decides_ties_stay_in_review_and_overlap_waits_for_everyone():
    assert resolve([("locatable", "PL")], overlap=1) == ("done", "locatable", "PL")
    assert resolve([("locatable", "PL")], overlap=2) == ("pending", None, None)
    assert resolve([("locatable", None), ("unusable", None)], overlap=2) == ("conflicted", None, None)
    assert resolve([("locatable", "PL"), ("locatable", "CZ"), ("unusable", None)], overlap=3) == (
        "done", "locatable", None)  # countries tie: nobody's country wins
    assert resolve([("locatable", "PL"), ("locatable", "PL"), ("locatable", "CZ")], 3) == ("done", "locatable", "PL")
    assert resolve([(None, None)], overlap=1) == ("pending", None, None)


def test_kappas_match_textbook_values():
    # Cohen: 2 raters, 50 items (Wikipedia's example): 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → κ = 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert fleiss_kappa([["a", "a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)
    assert fleiss_kappa([["a", "b"], ["b", "a"]]) == pytest.approx(-1.0)
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) is None  # no variation: undefined
    kappa, kind, used = agreement([[("ann", "a"), ("bob", "a")], [("ann", "b"), ("bob", "a")], [("ann", "b")]])
    assert (kind, used) == ("cohen", 2) and kappa == pytest.approx(0.0)
    kappa, kind, used = agreement([[("x", "a"), ("y", "a"), ("z", "a")], [("x", "b"), ("y", "b"), ("z", "a")],
                                   [("x", "b"), ("y", "b"), ("z", "b")]])
    assert kind == "fleiss" and used == 3 and 0 < kappa < 1


def _records(*answers, base=100):
    return [AnnotationRecord(ls_annotation_id=base + i, label=label, country=country, annotator=who, lead_time=10.0 + i,
                             payload={"id": base + i}) for i, (who, label, country) in enumerate(answers)]


def test_human_labels_and_clue_status_follow_the_decision(store_url, tmp_path):
    image_ids = seed_images(store_url, tmp_path / "img", [0.35, 0.45])
    clue_ids = seed_clues(store_url, ["Bollards like in Kraków", "gg wp"])
    route(store_url)
    with session_scope(store_url) as session:
        tasks = {(t.item_kind, t.item_id): t for t in session.scalars(select(ReviewTask))}
        set_decision(session, tasks["image", image_ids[0]], "done", "locatable", "CZ")
        set_decision(session, tasks["image", image_ids[1]], "conflicted", None, None)
        set_decision(session, tasks["clue", clue_ids[0]], "done", "geo_clue", "SK")
        set_decision(session, tasks["clue", clue_ids[1]], "done", "no_geo_clue", None)
    with session_scope(store_url) as session:
        assert human_labels(session, "image") == {image_ids[0]: ("locatable", "CZ")}
        assert human_labels(session, "clue") == {clue_ids[0]: ("geo_clue", "SK"), clue_ids[1]: ("no_geo_clue", None)}
        clues = {c.id: c for c in session.scalars(select(Clue))}
        assert (clues[clue_ids[0]].status, clues[clue_ids[0]].country) == ("accepted", "SK")
        assert clues[clue_ids[1]].status == "rejected"
        set_decision(session, session.scalar(select(ReviewTask).where(ReviewTask.item_id == clue_ids[1],
                                                                       ReviewTask.item_kind == "clue")),
                     "pending", None, None)
    with session_scope(store_url) as session:
        assert session.get(Clue, clue_ids[1]).status == "review"  # annotations withdrawn: back in review


def test_stored_annotations_mirror_label_studio_and_feed_the_stats(store_url, tmp_path):
    seed_images(store_url, tmp_path / "img", [0.35, 0.45])
    route(store_url)
    with session_scope(store_url) as session:
        first, second = session.scalars(select(ReviewTask).order_by(ReviewTask.id)).all()
        replace_annotations(session, first.id, _records(("ann", "locatable", "PL"), ("bob", "locatable", "PL")))
        replace_annotations(session, second.id, _records(("ann", "unusable", None), base=300)
                            + [AnnotationRecord(200, "locatable", None, "bob", 30.0, {})])
        set_decision(session, first, "done", "locatable", "PL")
        set_decision(session, second, "conflicted", None, None)
    with session_scope(store_url) as session:
        [image_stats, clue_stats] = review_stats(session, get_settings().review_project_prefix)
        assert image_stats.states == {"done": 1, "conflicted": 1}
        assert image_stats.annotations == 4 and image_stats.kappa_kind == "cohen"
        assert image_stats.mean_seconds_per_task == pytest.approx((10 + 11 + 10 + 30) / 2)
        assert clue_stats.annotations == 0 and clue_stats.kappa is None
        # an edited and a deleted annotation: the store follows
        replace_annotations(session, first.id, [AnnotationRecord(100, "unusable", None, "ann", 12.0, {"edited": True})])
    with session_scope(store_url) as session:
        rows = session.scalars(select(Annotation).where(Annotation.review_task_id == first.id)).all()
        assert [(a.ls_annotation_id, a.label, a.payload) for a in rows] == [(100, "unusable", {"edited": True})]


def test_local_queue_is_listed_and_decided_from_the_command_line(sqlite_store, tmp_path):
    from typer.testing import CliRunner

    from geocurate.cli import app

    image_ids = seed_images(sqlite_store, tmp_path / "img", [0.38, 0.42])
    runner = CliRunner()
    routed = runner.invoke(app, ["review", "route"])
    assert routed.exit_code == 0, routed.output
    assert "queued 2 new images" in routed.output
    listed = runner.invoke(app, ["review", "list", "--kind", "images"])
    assert listed.exit_code == 0 and listed.output.count("pending") == 2, listed.output
    with session_scope(sqlite_store) as session:
        task_id = session.scalar(select(ReviewTask.id).where(ReviewTask.item_id == image_ids[0]))
    bad = runner.invoke(app, ["review", "decide", str(task_id), "geo_clue"])
    assert bad.exit_code != 0
    wrong_country = runner.invoke(app, ["review", "decide", str(task_id), "locatable", "--country", "Atlantis"])
    assert wrong_country.exit_code != 0
    ok = runner.invoke(app, ["review", "decide", str(task_id), "locatable", "--country", "Czechia"])
    assert ok.exit_code == 0, ok.output
    with session_scope(sqlite_store) as session:
        assert human_labels(session, "image") == {image_ids[0]: ("locatable", "CZ")}
    stats = runner.invoke(app, ["review", "stats"])
    assert stats.exit_code == 0
    assert "locatability review: pending 1 (0 in Label Studio), done 1, conflicted 0" in stats.output


def test_unreachable_label_studio_is_retried_with_backoff_then_one_clear_error(sqlite_store, tmp_path, monkeypatch,
                                                                               caplog):
    from labeling.client import LabelStudioUnavailable
    from labeling.push import push_tasks
    from tests.labelstudio_server import free_port

    seed_images(sqlite_store, tmp_path / "img", [0.42])
    route(sqlite_store)
    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_API_KEY", "secret-token-never-printed")
    monkeypatch.setenv("GEOCURATE_TASK_MAX_RETRIES", "3")
    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "0")
    reload_settings()
    with caplog.at_level(logging.WARNING, logger="labeling.client"):
        with pytest.raises(LabelStudioUnavailable) as error:
            push_tasks(sqlite_store, settings=get_settings())
    assert "4 times" in str(error.value) and "rerun" in str(error.value)
    assert "secret-token-never-printed" not in str(error.value) + caplog.text
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 3
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(ReviewTask.ls_task_id)) is None


def test_backoff_grows_exponentially_and_stays_under_the_cap():
    from geocurate.retry import BACKOFF_BASE_S, backoff_delay

    import random

    random.seed(0)
    cap = 6 * BACKOFF_BASE_S
    delays = [[backoff_delay(attempt, cap) for _ in range(200)] for attempt in range(6)]
    assert max(delays[0]) <= BACKOFF_BASE_S and max(delays[1]) <= 2 * BACKOFF_BASE_S and max(delays[5]) <= cap
    assert max(delays[2]) > 2 * BACKOFF_BASE_S  # grows
    assert len({round(d, 6) for d in delays[4]}) > 100  # jitter
    assert backoff_delay(10_000, cap) <= cap  # a huge retry count neither overflows nor passes the cap


def test_missing_label_studio_settings_name_the_variable(sqlite_store):
    from labeling.client import LabelStudioNotConfigured, make_client

    with pytest.raises(LabelStudioNotConfigured, match="GEOCURATE_LABEL_STUDIO_URL"):
        make_client(get_settings())


def test_webhook_refuses_a_wrong_or_missing_secret_and_queues_the_named_task(sqlite_store, monkeypatch):
    from fastapi.testclient import TestClient

    from labeling.webhook import create_app

    monkeypatch.setenv("GEOCURATE_WEBHOOK_SECRET", "s3cret")
    reload_settings()
    pulled: list[int] = []
    client = TestClient(create_app(get_settings(), pulled.append))
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "task": 42}, "task": {"id": 42}}
    assert client.post("/webhook", json=event).status_code == 401
    assert client.post("/webhook", json=event, headers={"X-Geocurate-Secret": "wrong"}).status_code == 401
    assert pulled == []
    answer = client.post("/webhook", json=event, headers={"X-Geocurate-Secret": "s3cret"})
    assert answer.status_code == 200 and answer.json()["queued"] == [42]
    assert pulled == [42]
    bad = client.post("/webhook", content=b"{not json", headers={"X-Geocurate-Secret": "s3cret"})
    assert bad.status_code == 400
    other = client.post("/webhook", json={"action": "PROJECT_UPDATED"}, headers={"X-Geocurate-Secret": "s3cret"})
    assert other.json()["queued"] == [] and pulled == [42]
