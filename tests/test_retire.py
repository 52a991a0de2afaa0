"""Retiring review tasks of an older scorer version, against the real Label Studio the tests start: an unannotated
task is deleted there and closed in the store; an annotated one is kept, flagged, its answer pulled and counted for
the image; items in the new version's band are queued again and pushed once; a second retirement changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.engine import session_scope
from db.models import Annotation, ReviewTask, Score
from db.review import human_labels
from db.scores import add_scores, register_scorer_version
from geocurate.settings import get_settings
from labeling.client import make_client
from labeling.configs import IMAGE_REVIEW
from labeling.pull import pull_annotations
from labeling.push import push_tasks
from labeling.retire import RETIRED_FIELD, RETIRED_META, retire_stale_tasks
from labeling.routing import route_for_review
from tests.labeling_seed import SCORER, route, seed_images
from tests.test_labeling_server import annotate, project_tasks

pytest_plugins = ["tests.labelstudio_server"]
pytestmark = pytest.mark.labelstudio

NEW = "test-scorer-2"


def new_version(url: str, band: tuple[float, float], threshold: float) -> None:
    """A second scorer version over the same scores with another band (what a threshold change makes)."""
    with session_scope(url) as session:
        register_scorer_version(session, NEW, {"test": 2, "threshold": threshold, "review_band": list(band)})
        rows = session.execute(select(Score.image_id, Score.locatability).where(Score.scorer_version == SCORER)).all()
        add_scores(session, [dict(image_id=i, scorer_version=NEW, locatability=v, class_ratios={"6": 0.3},
                                  decision="drop") for i, v in rows])


def tasks_by_item(url: str) -> dict[int, ReviewTask]:
    with session_scope(url) as session:
        rows = list(session.scalars(select(ReviewTask).where(ReviewTask.item_kind == "image")))
        session.expunge_all()
    return {r.item_id: r for r in rows}


def test_stale_tasks_are_retired_unannotated_deleted_annotated_kept_and_counted(store_url, label_studio):
    # band [0.3, 0.5) of the old version: all four are routed and pushed
    answered, untouched, stays, leaves = seed_images(store_url, label_studio.image_root / "streets",
                                                     [0.31, 0.35, 0.45, 0.47])
    route(store_url)
    assert {t.scorer_version for t in tasks_by_item(store_url).values()} == {SCORER}  # routing records it
    push_tasks(store_url, settings=get_settings())
    before = tasks_by_item(store_url)
    client = make_client(get_settings())
    annotate(client, before[answered].ls_task_id, IMAGE_REVIEW, "locatable")  # answered, not pulled yet

    new_version(store_url, band=(0.44, 0.46), threshold=0.45)  # only `stays` is in the new band
    summary = retire_stale_tasks(store_url, NEW, settings=get_settings())
    assert (summary.retired, summary.deleted, summary.kept_annotated, summary.decided_by_answer) == (4, 3, 1, 1)

    after = tasks_by_item(store_url)
    assert {item: (t.state, t.retired_by) for item, t in after.items()} == {
        answered: ("done", NEW), untouched: ("retired", NEW), stays: ("retired", NEW), leaves: ("retired", NEW)}
    assert after[answered].ls_task_id == before[answered].ls_task_id  # kept in Label Studio
    assert all(after[i].ls_task_id is None for i in (untouched, stays, leaves))
    with session_scope(store_url) as session:
        assert human_labels(session, "image") == {answered: ("locatable", None)}  # the answer counts
        assert session.scalar(select(Annotation.label)) == "locatable"

    remaining = project_tasks(client, IMAGE_REVIEW)
    assert [t.id for t in remaining] == [before[answered].ls_task_id]
    [kept] = remaining
    assert kept.meta.get(RETIRED_META) == NEW and NEW in kept.data[RETIRED_FIELD]
    assert len(kept.annotations) == 1  # the human answer is untouched

    # the new band queues `stays` again, and the push sends it once, as a new task
    with session_scope(store_url) as session:
        routed = route_for_review(session, NEW, get_settings())
    assert routed.images_queued == 1
    pushed = push_tasks(store_url, settings=get_settings())
    assert pushed.created == 1
    requeued = tasks_by_item(store_url)[stays]
    assert (requeued.state, requeued.scorer_version, requeued.retired_by) == ("pending", NEW, None)
    assert requeued.ls_task_id is not None

    # a pull keeps the retired-but-answered task decided, and retiring again finds nothing stale
    pull_annotations(store_url, settings=get_settings())
    assert tasks_by_item(store_url)[answered].state == "done"
    again = retire_stale_tasks(store_url, NEW, settings=get_settings())
    assert again.retired == 0
    assert len(project_tasks(client, IMAGE_REVIEW)) == 2


def test_a_retired_task_with_an_undecided_answer_stays_retired_and_keeps_its_answers(sqlite_store, label_studio,
                                                                                     monkeypatch):
    """With two annotators required, one answer does not decide an open task; once retired, no second answer will
    come, so the answer it has decides the image (the majority of the answers given)."""
    monkeypatch.setenv("GEOCURATE_REVIEW_OVERLAP", "2")
    from geocurate.settings import reload_settings

    reload_settings()
    [image] = seed_images(sqlite_store, label_studio.image_root / "streets", [0.41])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())
    client = make_client(get_settings())
    annotate(client, tasks_by_item(sqlite_store)[image].ls_task_id, IMAGE_REVIEW, "not_locatable")
    pull_annotations(sqlite_store, settings=get_settings())
    assert tasks_by_item(sqlite_store)[image].state == "pending"  # one of two answers

    new_version(sqlite_store, band=(0.1, 0.2), threshold=0.15)
    summary = retire_stale_tasks(sqlite_store, NEW, settings=get_settings())
    assert (summary.kept_annotated, summary.decided_by_answer) == (1, 1)
    task = tasks_by_item(sqlite_store)[image]
    assert (task.state, task.final_label, task.retired_by) == ("done", "not_locatable", NEW)
    pull_annotations(sqlite_store, settings=get_settings())  # the periodic sync does not reopen it
    assert tasks_by_item(sqlite_store)[image].state == "done"


def test_without_label_studio_stale_local_tasks_are_closed_in_the_store(store_url):
    from pathlib import Path

    ids = seed_images(store_url, Path("streets"), [0.35, 0.45])
    route(store_url)
    with session_scope(store_url) as session:
        session.execute(ReviewTask.__table__.update().where(ReviewTask.item_id == ids[1])
                        .values(state="done", final_label="locatable"))  # decided in the local queue
    new_version(store_url, band=(0.1, 0.2), threshold=0.15)
    summary = retire_stale_tasks(store_url, NEW, settings=get_settings())
    assert (summary.retired, summary.deleted) == (1, 0)
    tasks = tasks_by_item(store_url)
    assert (tasks[ids[0]].state, tasks[ids[0]].retired_by) == ("retired", NEW)
    assert "retired by scorer test-scorer-2" in tasks[ids[0]].reason
    assert (tasks[ids[1]].state, tasks[ids[1]].retired_by) == ("done", None)  # a decision is never retired
    from typer.testing import CliRunner

    from geocurate.cli import app

    stats = CliRunner().invoke(app, ["review", "stats"])
    assert stats.exit_code == 0 and "retired 1" in stats.output, stats.output
    listed = CliRunner().invoke(app, ["review", "list", "--state", "retired"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "street_0000.png" in listed.output and "retired" in listed.output, listed.output
    assert "street_0001.png" not in listed.output
