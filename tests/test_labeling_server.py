"""Human review against a real Label Studio server (started once per session, see tests/labelstudio_server.py).

Annotations "by a human" are created through the API, as the UI does. Failures are injected by a small HTTP proxy
in front of the real server that answers 503 to chosen requests; everything else reaches Label Studio.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import session_scope
from db.models import Annotation, Clue, Quarantine, ReviewTask, Score
from db.review import human_labels
from geocurate.settings import get_settings, reload_settings
from labeling.client import LabelStudioUnavailable, make_client
from labeling.configs import CLUE_REVIEW, IMAGE_REVIEW
from labeling.pull import pull_annotations
from labeling.push import push_tasks
from tests.conftest import make_store
from tests.labeling_seed import route, seed_clues, seed_images

pytest_plugins = ["tests.labelstudio_server"]
pytestmark = pytest.mark.labelstudio


# --- helpers ----------------------------------------------------------------------------------------------------

def project_tasks(client, interface) -> list:
    """Every task of the interface's project under the configured title prefix."""
    title = interface.project_title(get_settings().review_project_prefix)
    project = next(p for p in client.projects.list(page_size=100).items if p.title == title)
    tasks, page = [], 1
    while True:
        batch = client.tasks.list(project=project.id, page=page, page_size=100, fields="all").items or []
        tasks += batch
        if len(batch) < 100:
            return tasks
        page += 1


def prediction_of(task) -> dict:
    [prediction] = task.predictions
    return prediction if isinstance(prediction, dict) else prediction.model_dump(mode="json")


def review_rows(url: str) -> dict[tuple[str, int], ReviewTask]:
    with session_scope(url) as session:
        return {(r.item_kind, r.item_id): r for r in session.scalars(select(ReviewTask))}


def annotate(client, ls_task_id: int, interface, label: str, country: str | None = None, user: int | None = None,
             seconds: float = 8.0):
    result = [interface.choice_result(label)] + ([interface.country_result(country)] if country else [])
    extra = {"completed_by": user} if user else {}
    return client.annotations.create(id=ls_task_id, result=result, lead_time=seconds, **extra)


def make_user(client, name: str) -> int:
    return client.users.create(email=f"{name}@geocurate.test", username=name, first_name=name.title()).id


class FaultyProxy:
    """Forwards to Label Studio, except that requests matching a rule get 503 (`times` times, or until healed)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.rules: list[list] = []  # [method, path regex, matches to let through, failures left, apply first]
        self.failed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                for rule in proxy.rules:
                    if rule[0] == self.command and re.search(rule[1], self.path) and rule[2] > 0:
                        rule[2] -= 1
                        continue
                    if rule[0] == self.command and re.search(rule[1], self.path) and rule[3] > 0:
                        rule[3] -= 1
                        proxy.failed += 1
                        if rule[4]:  # Label Studio applies the request, but its answer is lost
                            self._forward(body)
                        payload = b'{"detail": "injected failure"}'
                        self.send_response(503)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                answer = self._forward(body)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def _forward(self, body: bytes) -> httpx.Response:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                return httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body,
                                     timeout=120)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, method: str, path: str, times: float = float("inf"), after: int = 0,
             applied: bool = False) -> None:
        self.rules.append([method, path, after, times, applied])

    def heal(self) -> None:
        self.rules.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(label_studio, monkeypatch) -> Iterator[FaultyProxy]:
    faulty = FaultyProxy(label_studio.url)
    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_URL", faulty.url)
    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "0")
    reload_settings()
    yield faulty
    faulty.close()


# --- push -------------------------------------------------------------------------------------------------------

def test_push_twice_gives_each_item_exactly_one_task_with_the_machines_prediction(store_url, label_studio):
    image_ids = seed_images(store_url, label_studio.image_root / "streets", [0.1, 0.33, 0.41, 0.47, 0.9])
    clue_ids = seed_clues(store_url, ["Yellow bollards like in Kraków", "gg wp"])
    route(store_url)

    first = push_tasks(store_url, settings=get_settings())
    second = push_tasks(store_url, settings=get_settings())

    assert (first.created, first.reconciled, first.quarantined) == (5, 0, 0)
    assert (second.created, second.reconciled) == (0, 0)
    client = make_client(get_settings())
    images = project_tasks(client, IMAGE_REVIEW)
    clues = project_tasks(client, CLUE_REVIEW)
    assert sorted(t.data["geocurate_id"] for t in images) == [f"image:{i}" for i in sorted(image_ids[1:4])]
    assert sorted(t.data["geocurate_id"] for t in clues) == [f"clue:{i}" for i in sorted(clue_ids)]
    rows = review_rows(store_url)
    by_task = {t.id: t for t in images + clues}
    assert {r.ls_task_id for r in rows.values()} == set(by_task)
    for (kind, item_id), row in rows.items():
        task = by_task[row.ls_task_id]
        assert task.data["geocurate_id"] == f"{kind}:{item_id}"
        assert prediction_of(task)["score"] == pytest.approx(row.priority)
    # the most uncertain image (0.41, next to the 0.4 threshold) has the highest prediction score
    scores = {t.data["geocurate_id"]: prediction_of(t)["score"] for t in images}
    assert max(scores, key=scores.get) == f"image:{image_ids[2]}"
    choices = {t.data["geocurate_id"]: prediction_of(t)["result"][0]["value"]["choices"][0] for t in images}
    assert choices[f"image:{image_ids[2]}"] == "locatable" and choices[f"image:{image_ids[1]}"] == "not locatable"
    spans = [r for t in clues for r in prediction_of(t)["result"] if r["type"] == "labels"]
    assert [(s["value"]["text"], s["value"]["labels"]) for s in spans] == [("Kraków", ["city"])]
    # the annotator's browser gets the image through local-files serving
    image_task = by_task[rows["image", image_ids[2]].ls_task_id]
    served = httpx.get(label_studio.url + image_task.data["image"],
                       headers={"Authorization": f"Token {label_studio.token}"})
    assert served.status_code == 200
    assert served.content == (label_studio.image_root / "streets" / "street_0002.png").read_bytes()


def test_a_push_that_died_before_recording_ids_adopts_its_tasks_instead_of_duplicating(sqlite_store, label_studio):
    seed_images(sqlite_store, label_studio.image_root / "streets", [0.35, 0.38, 0.42])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())
    with session_scope(sqlite_store) as session:  # as if the process died between import and recording
        for row in session.scalars(select(ReviewTask)):
            row.ls_task_id = None

    again = push_tasks(sqlite_store, settings=get_settings())

    assert (again.created, again.reconciled) == (0, 3)
    assert len(project_tasks(make_client(get_settings()), IMAGE_REVIEW)) == 3
    assert all(r.ls_task_id for r in review_rows(sqlite_store).values())


def test_images_outside_the_served_directory_are_quarantined_and_the_rest_pushed(sqlite_store, label_studio, tmp_path):
    inside = seed_images(sqlite_store, label_studio.image_root / "streets", [0.35])
    outside = seed_images(sqlite_store, tmp_path / "elsewhere", [0.36, 0.44], first_seed=10)
    flat = seed_images(sqlite_store, label_studio.image_root, [0.46], first_seed=20)  # not in a folder
    route(sqlite_store)
    summary = push_tasks(sqlite_store, kind="image", settings=get_settings())
    rows = review_rows(sqlite_store)
    pushed = {item for (kind, item), row in rows.items() if row.ls_task_id}
    assert set(inside) <= pushed
    assert pushed == set(inside)
    assert summary.quarantined == len(outside) + len(flat) == 3
    with session_scope(sqlite_store) as session:
        reasons = session.scalars(select(Quarantine.detail)).all()
    assert len(reasons) == 3 and all("GEOCURATE_LABEL_STUDIO_IMAGE_ROOT" in reason for reason in reasons)
    assert sum("subdirectories" in reason for reason in reasons) == 1


# --- pull -------------------------------------------------------------------------------------------------------

def test_pull_stores_new_updated_and_deleted_annotations(store_url, label_studio):
    [image_id] = seed_images(store_url, label_studio.image_root / "streets", [0.45])
    route(store_url)
    push_tasks(store_url, settings=get_settings())
    client = make_client(get_settings())
    ls_task = review_rows(store_url)["image", image_id].ls_task_id

    created = annotate(client, ls_task, IMAGE_REVIEW, "not_locatable", country="Czechia", seconds=14)
    first = pull_annotations(store_url, settings=get_settings())
    with session_scope(store_url) as session:
        [stored] = session.scalars(select(Annotation)).all()
        assert (stored.ls_annotation_id, stored.label, stored.country, stored.lead_time) == (
            created.id, "not_locatable", "CZ", 14)
        assert human_labels(session, "image") == {image_id: ("not_locatable", "CZ")}
    assert (first.tasks, first.annotations, first.done, first.unchanged) == (1, 1, 1, 0)
    steady = pull_annotations(store_url, settings=get_settings())  # the periodic sync with nothing new writes nothing
    assert (steady.tasks, steady.unchanged, steady.changed, steady.done) == (1, 1, 0, 1)

    client.annotations.update(id=created.id, result=[IMAGE_REVIEW.choice_result("locatable")])
    pull_annotations(store_url, settings=get_settings())
    with session_scope(store_url) as session:
        assert session.scalars(select(Annotation.label)).all() == ["locatable"]
        assert human_labels(session, "image") == {image_id: ("locatable", None)}

    client.annotations.delete(id=created.id)
    third = pull_annotations(store_url, settings=get_settings())
    assert third.deleted == 1
    with session_scope(store_url) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 0
        assert human_labels(session, "image") == {}
        assert session.scalar(select(ReviewTask.state)) == "pending"


def test_stores_sharing_one_label_studio_keep_apart_by_project_prefix(sqlite_store, tmp_path, label_studio,
                                                                      monkeypatch):
    """Both stores have an image 1; with the same titles each would pull the other's annotations."""
    (tmp_path / "second").mkdir()
    second_store = make_store("sqlite", tmp_path / "second")
    stores = {"team-a": sqlite_store, "team-b": next(second_store)}
    labels = {"team-a": "not_locatable", "team-b": "locatable"}

    def as_team(prefix: str) -> str:
        monkeypatch.setenv("GEOCURATE_REVIEW_PROJECT_PREFIX", prefix)
        reload_settings()
        return stores[prefix]

    image_ids = {}
    for seed, prefix in enumerate(stores):
        url = as_team(prefix)
        [image_ids[prefix]] = seed_images(url, label_studio.image_root / "streets", [0.45], first_seed=seed)
        route(url)
        assert push_tasks(url, settings=get_settings()).created == 1
    client = make_client(get_settings())
    for prefix, url in stores.items():
        as_team(prefix)
        [task] = project_tasks(client, IMAGE_REVIEW)
        assert task.data["geocurate_id"] == f"image:{image_ids[prefix]}"
        annotate(client, task.id, IMAGE_REVIEW, labels[prefix])

    for prefix, url in stores.items():
        as_team(prefix)
        assert pull_annotations(url, settings=get_settings()).annotations == 1
        with session_scope(url) as session:
            assert human_labels(session, "image") == {image_ids[prefix]: (labels[prefix], None)}
    assert image_ids["team-a"] == image_ids["team-b"]
    second_store.close()


def test_two_annotators_disagreeing_stay_in_review_and_agreeing_decide(sqlite_store, label_studio, monkeypatch):
    monkeypatch.setenv("GEOCURATE_REVIEW_OVERLAP", "2")
    reload_settings()
    split, agreed = seed_images(sqlite_store, label_studio.image_root / "streets", [0.36, 0.44])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())
    client = make_client(get_settings())
    ann, bob = make_user(client, f"ann{time.monotonic_ns()}"), make_user(client, f"bob{time.monotonic_ns()}")
    rows = review_rows(sqlite_store)
    annotate(client, rows["image", split].ls_task_id, IMAGE_REVIEW, "locatable", user=ann)
    annotate(client, rows["image", agreed].ls_task_id, IMAGE_REVIEW, "unusable", user=ann)
    pull_annotations(sqlite_store, settings=get_settings())
    assert {r.state for r in review_rows(sqlite_store).values()} == {"pending"}  # waiting for the second annotator

    annotate(client, rows["image", split].ls_task_id, IMAGE_REVIEW, "not_locatable", user=bob)
    annotate(client, rows["image", agreed].ls_task_id, IMAGE_REVIEW, "unusable", country="PL", user=bob)
    summary = pull_annotations(sqlite_store, settings=get_settings())

    rows = review_rows(sqlite_store)
    assert (rows["image", split].state, rows["image", split].final_label) == ("conflicted", None)
    assert (rows["image", agreed].state, rows["image", agreed].final_label, rows["image", agreed].final_country) == (
        "done", "unusable", "PL")
    assert (summary.conflicted, summary.done, summary.annotations) == (1, 1, 4)
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 4  # every answer kept
        from labeling.stats import review_stats

        image_stats = review_stats(session, get_settings().review_project_prefix)[0]
    assert image_stats.kappa_kind == "cohen" and image_stats.multi_annotated_tasks == 2
    assert image_stats.states["conflicted"] == 1


def test_a_labeled_image_changes_the_export_decision_in_both_directions(sqlite_store, label_studio):
    from curation.decisions import final_decision

    rescued, dropped = seed_images(sqlite_store, label_studio.image_root / "streets", [0.32, 0.48])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())
    client = make_client(get_settings())
    rows = review_rows(sqlite_store)
    with session_scope(sqlite_store) as session:
        scores = dict(session.execute(select(Score.image_id, Score.locatability)).tuples().all())
    assert [final_decision(scores[i], None, 0.4) for i in (rescued, dropped)] == [False, True]
    annotate(client, rows["image", rescued].ls_task_id, IMAGE_REVIEW, "locatable", country="SK")
    annotate(client, rows["image", dropped].ls_task_id, IMAGE_REVIEW, "unusable")
    pull_annotations(sqlite_store, settings=get_settings())
    with session_scope(sqlite_store) as session:
        labels = human_labels(session, "image")
    assert [final_decision(scores[i], labels[i][0], 0.4) for i in (rescued, dropped)] == [True, False]
    assert labels[rescued][1] == "SK"


def test_clue_labels_reject_or_accept_the_clue_with_the_annotators_country(sqlite_store, label_studio):
    noise, place = seed_clues(sqlite_store, ["gg wp", "Those bollards look like Kraków"])
    route(sqlite_store)
    push_tasks(sqlite_store, kind="clue", settings=get_settings())
    client = make_client(get_settings())
    rows = review_rows(sqlite_store)
    annotate(client, rows["clue", noise].ls_task_id, CLUE_REVIEW, "no_geo_clue")
    annotate(client, rows["clue", place].ls_task_id, CLUE_REVIEW, "geo_clue", country="Slovakia")
    pull_annotations(sqlite_store, settings=get_settings())
    with session_scope(sqlite_store) as session:
        clues = {c.id: c for c in session.scalars(select(Clue))}
    assert clues[noise].status == "rejected"
    assert (clues[place].status, clues[place].country) == ("accepted", "SK")


def test_an_unknown_country_is_quarantined_and_the_label_still_counts(sqlite_store, label_studio):
    [image_id] = seed_images(sqlite_store, label_studio.image_root / "streets", [0.41])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())
    annotate(make_client(get_settings()), review_rows(sqlite_store)["image", image_id].ls_task_id, IMAGE_REVIEW,
             "locatable", country="Narnia")
    summary = pull_annotations(sqlite_store, settings=get_settings())
    assert summary.quarantined == 1
    with session_scope(sqlite_store) as session:
        assert human_labels(session, "image") == {image_id: ("locatable", None)}
        assert session.scalar(select(Quarantine.detail)) == "Narnia"


# --- webhook ----------------------------------------------------------------------------------------------------

@pytest.fixture
def webhook_receiver(monkeypatch) -> Iterator[str]:
    from labeling.webhook import create_app, pull_task
    from tests.asgi_server import serving
    from tests.labelstudio_server import free_port

    port = free_port()
    monkeypatch.setenv("GEOCURATE_WEBHOOK_SECRET", "hook-secret")
    monkeypatch.setenv("GEOCURATE_WEBHOOK_URL", f"http://127.0.0.1:{port}/webhook")
    reload_settings()
    settings = get_settings()
    with serving(create_app(settings, lambda task_id: pull_task(task_id, settings)), port) as url:
        yield url


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_the_webhook_pulls_an_annotated_task_without_a_manual_pull(sqlite_store, label_studio, webhook_receiver):
    [image_id] = seed_images(sqlite_store, label_studio.image_root / "streets", [0.43])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())  # registers the webhook with the secret header
    client = make_client(get_settings())
    ls_task = review_rows(sqlite_store)["image", image_id].ls_task_id

    def stored_labels():
        with session_scope(sqlite_store) as session:
            return session.scalars(select(Annotation.label)).all()

    created = annotate(client, ls_task, IMAGE_REVIEW, "unusable")
    assert wait_for(lambda: stored_labels() == ["unusable"]), "the webhook did not bring the annotation in"
    client.annotations.delete(id=created.id)
    assert wait_for(lambda: stored_labels() == []), "the deletion webhook did not remove the annotation"

    other = annotate(client, ls_task, IMAGE_REVIEW, "locatable")
    assert wait_for(lambda: stored_labels() == ["locatable"])
    event = {"action": "ANNOTATION_UPDATED", "annotation": {"id": other.id, "task": ls_task}}
    client.annotations.update(id=other.id, result=[IMAGE_REVIEW.choice_result("not_locatable")])
    time.sleep(0.5)  # let the real webhook's pull finish, then send forged ones
    with session_scope(sqlite_store) as session:
        session.execute(ReviewTask.__table__.update().values(final_label="tampered"))
    for headers in ({}, {"X-Geocurate-Secret": "wrong"}):
        assert httpx.post(f"{webhook_receiver}/webhook", json=event, headers=headers).status_code == 401
    time.sleep(0.5)
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(ReviewTask.final_label)) == "tampered"  # nothing pulled for a forged call


# --- failures ---------------------------------------------------------------------------------------------------

def test_5xx_during_push_is_retried_and_a_lasting_outage_leaves_a_consistent_store(sqlite_store, label_studio, proxy,
                                                                                    caplog):
    seed_images(sqlite_store, label_studio.image_root / "streets", [0.31, 0.33, 0.35, 0.37, 0.39])
    route(sqlite_store)
    proxy.fail("POST", r"/api/projects/\d+/import", times=1)  # one transient 503: retried, no duplicate
    first = push_tasks(sqlite_store, chunk_size=2, limit=2, settings=get_settings())
    assert first.created == 2 and proxy.failed == 1
    assert any("retry 1/2" in r.getMessage() for r in caplog.records)

    proxy.heal()
    proxy.fail("POST", r"/api/projects/\d+/import", times=1, applied=True)  # imported, but the answer is lost
    lost = push_tasks(sqlite_store, chunk_size=2, limit=1, settings=get_settings())
    assert (lost.created, lost.reconciled) == (0, 1)  # adopted on retry, not imported twice
    assert len(project_tasks(make_client(get_settings()), IMAGE_REVIEW)) == 3

    proxy.heal()
    proxy.fail("POST", r"/api/projects/\d+/import", after=1)  # the next chunk goes through, then it is down
    with pytest.raises(LabelStudioUnavailable, match="rerun"):
        push_tasks(sqlite_store, chunk_size=1, settings=get_settings())
    assert sum(1 for r in review_rows(sqlite_store).values() if r.ls_task_id) == 5 - 1  # exactly what exists there
    assert len(project_tasks(make_client(get_settings()), IMAGE_REVIEW)) == 4

    proxy.heal()
    rerun = push_tasks(sqlite_store, chunk_size=2, settings=get_settings())
    assert rerun.created == 1
    tasks = project_tasks(make_client(get_settings()), IMAGE_REVIEW)
    assert len(tasks) == 5 and len({t.data["geocurate_id"] for t in tasks}) == 5
    assert all(r.ls_task_id for r in review_rows(sqlite_store).values())


def test_a_pull_cut_off_half_way_keeps_whole_tasks_and_the_rerun_completes(sqlite_store, label_studio, proxy,
                                                                           monkeypatch):
    import labeling.projects

    ids = seed_images(sqlite_store, label_studio.image_root / "streets", [0.31, 0.33, 0.35, 0.37])
    route(sqlite_store)
    push_tasks(sqlite_store, settings=get_settings())
    client = make_client(get_settings())
    rows = review_rows(sqlite_store)
    for image_id in ids:
        annotate(client, rows["image", image_id].ls_task_id, IMAGE_REVIEW, "locatable")
    monkeypatch.setattr(labeling.projects, "PAGE_SIZE", 2)
    proxy.fail("GET", r"/api/tasks/?\?.*page=2")
    with pytest.raises(LabelStudioUnavailable):
        pull_annotations(sqlite_store, settings=get_settings())
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 2
        assert len(human_labels(session, "image")) == 2
    proxy.heal()
    summary = pull_annotations(sqlite_store, settings=get_settings())
    assert (summary.tasks, summary.done) == (4, 4)
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 4
