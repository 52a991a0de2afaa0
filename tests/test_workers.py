"""The batch machinery without a broker: claims and leases, the guarded hand-over between steps, retries, failure
records and reconcile, on SQLite and PostgreSQL. Steps here are small plain functions writing real rows (quarantine
records), so every effect is counted in the store; the real steps run in tests/test_workers_celery.py."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from db import batches
from db.engine import session_scope
from db.models import Batch, Quarantine, Run, Score, ScorerVersion, TaskFailure, utcnow
from db.quarantine import quarantine
from geocurate.settings import get_settings, reload_settings
from workers import pipeline, steps
from workers.steps import Step


def mark_items(session, claim, params, settings) -> dict[str, Any]:
    """A step whose effect is one idempotent row per item, like every real step."""
    added = sum(quarantine(session, "test", f"{claim.step}:{item}", "processed") for item in claim.payload["items"])
    return {"items": len(claim.payload["items"]), "added": added}


def plan_items(count: int, size: int):
    return lambda session, run_id, params, settings: [
        {"items": list(range(start, min(start + size, count)))} for start in range(0, count, size)
    ]


@pytest.fixture
def fake_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, Step]:
    table = {
        "ingest": Step("workers.tasks.ingest_batch", plan_items(10, 3), mark_items, critical=False),
        "score": Step("workers.tasks.score_batch", plan_items(7, 2), mark_items, critical=False),
        "route": Step("workers.tasks.route_for_review", plan_items(0, 1), mark_items, critical=False),
        "export": Step("workers.tasks.build_export", plan_items(1, 1), mark_items, critical=True),
    }
    monkeypatch.setattr(steps, "STEPS", table)
    return table


def processed(url: str, step: str) -> int:
    with session_scope(url) as session:
        return session.scalar(
            select(func.count()).select_from(Quarantine).where(Quarantine.reference.like(f"{step}:%"))
        )


def new_run(url: str, step: str = "ingest", payloads=({"items": [1]},)) -> tuple[int, list[int]]:
    with session_scope(url) as session:
        run_id = batches.create_run(session, [step], {})
        return run_id, batches.add_batches(session, run_id, step, list(payloads))


def test_a_claim_is_exclusive_until_its_lease_expires(store_url: str) -> None:
    _, (batch_id,) = new_run(store_url)
    with session_scope(store_url) as session:
        first = batches.claim(session, batch_id, "host-a:1", lease_seconds=60)
        assert first is not None and first.payload == {"items": [1]}
        assert batches.claim(session, batch_id, "host-b:2", lease_seconds=60) is None
        later = utcnow() + timedelta(seconds=61)
        second = batches.claim(session, batch_id, "host-b:2", lease_seconds=60, now=later)
        assert second is not None
        assert not batches.finish(session, first, {"n": 1}), "a worker whose lease was taken over cannot finish"
        assert batches.finish(session, second, {"n": 1})
        assert batches.claim(session, batch_id, "host-c:3", 60, now=later + timedelta(hours=1)) is None
        batch = session.get(Batch, batch_id)
        assert (batch.status, batch.claimed_by, batch.attempts, batch.result) == ("done", "host-b:2", 2, {"n": 1})


def test_a_released_batch_is_claimed_again_at_once(store_url: str) -> None:
    _, (batch_id,) = new_run(store_url)
    with session_scope(store_url) as session:
        claim = batches.claim(session, batch_id, "host-a:1", 600)
        assert batches.release(session, claim)
        assert batches.claim(session, batch_id, "host-b:2", 600) is not None


def test_only_one_caller_moves_a_run_to_its_next_step(store_url: str) -> None:
    with session_scope(store_url) as session:
        run_id = batches.create_run(session, ["ingest", "score"], {})
    with session_scope(store_url) as session:
        assert batches.advance(session, run_id, "ingest", "score")
    with session_scope(store_url) as session:
        assert not batches.advance(session, run_id, "ingest", "score")
        assert session.get(Run, run_id).step == "score"


def test_an_embedded_run_goes_through_every_step_once(store_url: str, fake_steps) -> None:
    settings = get_settings()
    run_id = pipeline.start_run(["ingest", "score", "route", "export"], {}, "pipeline", settings)
    state = pipeline.run_progress(run_id, settings)
    assert state["status"] == "done", state
    assert processed(store_url, "ingest") == 10 and processed(store_url, "score") == 7
    assert processed(store_url, "export") == 1
    summary = state["summary"]
    assert summary["ingest"]["batches"] == {"done": 4} and summary["ingest"]["totals"]["added"] == 10
    assert summary["score"]["batches"] == {"done": 4} and summary["score"]["totals"]["items"] == 7
    assert "route" not in summary, "a step with nothing to do is passed through without batches"


def test_a_second_delivery_of_a_done_batch_changes_nothing(store_url: str, fake_steps) -> None:
    from workers import tasks

    run_id = pipeline.start_run(["ingest"], {}, "pipeline", get_settings())
    with session_scope(store_url) as session:
        before = session.execute(select(Batch.id, Batch.status, Batch.attempts, Batch.updated_at, Batch.result)
                                 .order_by(Batch.id)).all()
    result = tasks.ingest_batch.apply(args=(before[0].id,)).get()
    assert result == {"batch_id": before[0].id, "skipped": True}
    with session_scope(store_url) as session:
        after = session.execute(select(Batch.id, Batch.status, Batch.attempts, Batch.updated_at, Batch.result)
                                .order_by(Batch.id)).all()
    assert after == before and processed(store_url, "ingest") == 10
    assert pipeline.run_progress(run_id, get_settings())["status"] == "done"


def test_transient_errors_are_retried_until_the_batch_succeeds(store_url: str, fake_steps, monkeypatch) -> None:
    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "0")
    settings = reload_settings()
    failures = iter([OperationalError("SELECT 1", {}, Exception("server closed the connection")),
                     ConnectionError("connection reset")])

    def flaky(session, claim, params, settings):
        error = next(failures, None)
        if error is not None:
            raise error
        return mark_items(session, claim, params, settings)

    fake_steps["ingest"] = Step("workers.tasks.ingest_batch", plan_items(2, 2), flaky, critical=False)
    run_id = pipeline.start_run(["ingest"], {}, "pipeline", settings)
    assert pipeline.run_progress(run_id, get_settings())["status"] == "done"
    with session_scope(store_url) as session:
        batch = session.scalars(select(Batch)).one()
        assert (batch.status, batch.attempts) == ("done", 3)
        assert session.scalar(select(func.count()).select_from(TaskFailure)) == 0
    assert processed(store_url, "ingest") == 2


def test_a_task_that_fails_its_last_retry_is_recorded(store_url: str, fake_steps, monkeypatch) -> None:
    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "0")
    monkeypatch.setenv("GEOCURATE_TASK_MAX_RETRIES", "2")
    settings = reload_settings()
    calls = []

    def database_down(session, claim, params, settings):
        calls.append(claim.batch_id)
        raise OperationalError("SELECT 1", {}, Exception("could not connect to server"))

    fake_steps["ingest"] = Step("workers.tasks.ingest_batch", plan_items(1, 1), database_down, critical=False)
    run_id = pipeline.start_run(["ingest", "score"], {}, "pipeline", settings)
    assert len(calls) == 3, "the first try and two retries"
    with session_scope(store_url) as session:
        failure = session.scalars(select(TaskFailure)).one()
        assert failure.task_name == "workers.tasks.ingest_batch" and "could not connect" in failure.error
        assert session.scalars(select(Batch.status).where(Batch.step == "ingest")).one() == "failed"
        from db.status import store_status

        shown = store_status(session)
        assert shown.counts["batches"]["failed"] == 1
        assert any("could not connect" in error for _, _, error in shown.recent_failures)
    state = pipeline.run_progress(run_id, get_settings())
    assert processed(store_url, "score") == 7, "a failed ingest batch does not stop the run"
    assert state["status"] == "partial" and "step ingest: 1 batch(es) failed" in state["error"], "nor is it done"


def test_bad_input_is_not_retried_and_a_critical_step_fails_the_run(store_url: str, fake_steps) -> None:
    calls = []

    def bad_input(session, claim, params, settings):
        calls.append(1)
        raise ValueError("export name taken")

    fake_steps["export"] = Step("workers.tasks.build_export", plan_items(1, 1), bad_input, critical=True)
    run_id = pipeline.start_run(["export", "score"], {}, "pipeline", get_settings())
    state = pipeline.run_progress(run_id, get_settings())
    assert calls == [1]
    assert state["status"] == "failed" and "1 batch(es) failed" in state["error"]
    assert processed(store_url, "score") == 0


def test_reconcile_requeues_expired_claims_and_finishes_the_run(store_url: str, fake_steps) -> None:
    settings = get_settings()
    run_id, first = pipeline.create_run(["ingest", "score"], {}, "pipeline", settings)
    step, batch_ids = first
    with session_scope(store_url) as session:  # a worker on another machine claimed two batches, then died
        for batch_id in batch_ids[:2]:
            batches.claim(session, batch_id, "gone-host:4242", lease_seconds=60)
    pipeline.send(step, batch_ids, settings)  # every message arrives; the held batches are skipped
    assert pipeline.run_progress(run_id, get_settings())["status"] == "running"
    assert processed(store_url, "ingest") == 4, "the held batches were skipped, not done twice"
    assert pipeline.reconcile(settings)["requeued"] == 0, "their lease still runs"
    with session_scope(store_url) as session:  # a minute later
        session.execute(Batch.__table__.update().where(Batch.status == "claimed")
                        .values(lease_until=utcnow() - timedelta(seconds=1)))
    outcome = pipeline.reconcile(settings)
    assert outcome["requeued"] == 2
    state = pipeline.run_progress(run_id, get_settings())
    assert state["status"] == "done", state
    assert processed(store_url, "ingest") == 10 and processed(store_url, "score") == 7
    assert pipeline.reconcile(settings) == {"requeued": 0, "resent": 0, "advanced": 0}


def test_a_batch_held_by_a_dead_local_process_is_taken_over_at_once(store_url: str, fake_steps) -> None:
    import socket

    settings = get_settings()
    run_id, (step, batch_ids) = pipeline.create_run(["ingest"], {}, "pipeline", settings)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with session_scope(store_url) as session:
        batches.claim(session, batch_ids[0], f"{socket.gethostname()}:{dead.stdout.strip()}", lease_seconds=3600)
    pipeline.send(step, batch_ids, settings)
    assert pipeline.run_progress(run_id, get_settings())["status"] == "done"


def test_reconcile_resends_queued_batches_whose_message_was_lost(store_url: str, fake_steps, monkeypatch) -> None:
    monkeypatch.setenv("GEOCURATE_LEASE_SECONDS", "1")
    monkeypatch.setenv("GEOCURATE_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "1")
    settings = reload_settings()
    run_id, _ = pipeline.create_run(["ingest"], {}, "pipeline", settings)  # never sent: the broker lost them
    with session_scope(store_url) as session:
        session.execute(Batch.__table__.update().values(updated_at=utcnow() - timedelta(seconds=5)))
    assert pipeline.reconcile(settings)["resent"] == 4
    assert pipeline.run_progress(run_id, get_settings())["status"] == "done"


def test_celery_is_configured_for_long_crash_safe_tasks(monkeypatch) -> None:
    from workers.app import celery_config

    monkeypatch.setenv("GEOCURATE_BROKER_URL", "redis://127.0.0.1:6379/9")
    monkeypatch.setenv("GEOCURATE_QUEUE_PREFIX", "t1-")
    config = celery_config(reload_settings())
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["worker_max_tasks_per_child"] == 100
    assert config["broker_transport_options"]["visibility_timeout"] == 3600
    assert config["result_backend"] == "redis://127.0.0.1:6379/9" and not config["task_always_eager"]
    assert config["task_routes"]["workers.tasks.score_batch"] == {"queue": "t1-score"}
    assert {q.name for q in config["task_queues"]} == {"t1-score", "t1-train", "t1-ingest", "t1-review", "t1-export"}
    assert config["beat_schedule"]["reconcile"]["schedule"] == 30.0
    assert config["beat_schedule"]["reconcile"]["options"] == {"expires": 30.0}, "a tick that waited is dropped"


def test_retry_delays_must_fit_in_the_visibility_timeout(monkeypatch) -> None:
    from workers.app import celery_config

    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "4000")
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        celery_config(reload_settings())


def test_a_heartbeat_must_come_more_often_than_the_lease_runs_out(monkeypatch) -> None:
    from workers.app import celery_config

    monkeypatch.setenv("GEOCURATE_LEASE_SECONDS", "15")
    monkeypatch.setenv("GEOCURATE_HEARTBEAT_SECONDS", "15")
    with pytest.raises(ValueError, match="GEOCURATE_HEARTBEAT_SECONDS .* must be below GEOCURATE_LEASE_SECONDS"):
        celery_config(reload_settings())


def test_a_heartbeat_keeps_a_working_claim_and_a_dead_one_runs_out(store_url: str, monkeypatch) -> None:
    """A batch that runs longer than its lease keeps its claim while the heartbeat beats; once it stops (the worker
    died), the claim runs out within one lease and reconcile can take it back."""
    import time

    from workers.leases import kept_alive

    monkeypatch.setenv("GEOCURATE_LEASE_SECONDS", "1")
    monkeypatch.setenv("GEOCURATE_HEARTBEAT_SECONDS", "0.2")
    settings = reload_settings()
    _, (batch_id,) = new_run(store_url)
    with session_scope(store_url) as session:
        claim = batches.claim(session, batch_id, "host-a:1", settings.lease_seconds)
    with kept_alive(claim, settings):
        time.sleep(2.5)
        with session_scope(store_url) as session:
            assert batches.requeue_expired(session) == [], "renewed on every heartbeat"
    time.sleep(1.5)
    with session_scope(store_url) as session:
        assert batches.requeue_expired(session) == [(batch_id, "ingest")], "no heartbeat: expired after one lease"


def test_embedded_mode_runs_tasks_in_process() -> None:
    from workers.app import celery_config

    config = celery_config(get_settings())
    assert config["task_always_eager"] and config["broker_url"] == "memory://"


def test_transient_errors_are_told_from_bad_input() -> None:
    """The tasks' retry decision is geocurate.retry's: the one policy labeling.client's requests also follow."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from db.engine import StoreUnavailable
    from geocurate.retry import backoff_delay, is_transient
    from labeling import client
    from workers import tasks

    assert tasks.is_transient is client.is_transient is is_transient
    request = httpx.Request("GET", "http://ls/api/tasks")

    def status(code: int) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError(str(code), request=request, response=httpx.Response(code, request=request))

    assert is_transient(OperationalError("SELECT 1", {}, Exception("timeout")))
    assert is_transient(StoreUnavailable("cannot reach the store"))
    assert is_transient(status(503)) and is_transient(ApiError(status_code=502, body="bad gateway"))
    assert is_transient(status(429)) and is_transient(ApiError(status_code=429, body="slow down"))
    assert is_transient(httpx.ConnectError("refused", request=request))
    assert not is_transient(status(404)) and not is_transient(ApiError(status_code=401, body="bad token"))
    assert not is_transient(ValueError("bad JSON"))
    assert not is_transient(FileNotFoundError("missing image"))
    cap = get_settings().retry_backoff_max
    delays = [backoff_delay(n, cap) for n in range(12)]
    assert all(0 <= d <= cap for d in delays)


def test_worker_command_needs_a_broker_and_known_queues(monkeypatch) -> None:
    from typer.testing import CliRunner

    from geocurate.cli import app

    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code != 0 and "GEOCURATE_BROKER_URL" in str(result.exception)
    monkeypatch.setenv("GEOCURATE_BROKER_URL", "redis://127.0.0.1:6379/9")
    reload_settings()
    result = CliRunner().invoke(app, ["worker", "--queues", "score,gpu"])
    assert result.exit_code != 0 and "unknown queue(s) gpu" in str(result.exception)


def test_geocurate_reconcile_requeues_a_dead_workers_batch_by_hand(store_url: str, fake_steps) -> None:
    """Embedded, the re-queued batch runs in the command itself, so the run finishes."""
    from typer.testing import CliRunner

    from geocurate.cli import app

    settings = get_settings()
    run_id, (step, batch_ids) = pipeline.create_run(["ingest"], {}, "pipeline", settings)
    pipeline.send(step, batch_ids[1:], settings)
    with session_scope(store_url) as session:  # its worker died an hour ago, holding the first batch
        batches.claim(session, batch_ids[0], "gone-host:4242", 60, now=utcnow() - timedelta(hours=1))
    result = CliRunner().invoke(app, ["reconcile"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output == "reconcile: 1 expired claims re-queued, 0 lost messages re-sent, 0 runs moved on\n"
    assert pipeline.run_progress(run_id, get_settings())["status"] == "done" and processed(store_url, "ingest") == 10


UNREACHABLE = {"GEOCURATE_BROKER_URL": "redis://127.0.0.1:1/0", "GEOCURATE_DATABASE_URL": "sqlite:///unused.db"}


@pytest.mark.parametrize(("command", "env", "named"), [
    ("worker", UNREACHABLE, "broker at redis://127.0.0.1:1/0"),
    ("beat", {**UNREACHABLE, "GEOCURATE_BROKER_URL": "amqp://guest:secret@127.0.0.1:1//"},
     "broker at amqp://guest:***@127.0.0.1:1//"),
    ("reconcile", {"GEOCURATE_DATABASE_URL": "postgresql+psycopg://gc:secret@127.0.0.1:1/gc"},
     "store at postgresql+psycopg://gc:***@127.0.0.1:1/gc"),
], ids=["worker-broker", "beat-broker", "reconcile-store"])
def test_deployment_commands_fail_fast_with_one_line(command: str, env: dict[str, str], named: str,
                                                     tmp_path) -> None:
    """Instead of Celery's endless reconnect loop or a traceback from the first query."""
    import os

    clean = {key: value for key, value in os.environ.items() if not key.startswith("GEOCURATE_")}
    done = subprocess.run([sys.executable, "-m", "geocurate.cli", command], env={**clean, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: cannot reach the {named}: ") and done.stderr.count("\n") == 1, done.stderr


def test_geocurate_run_embedded_on_sqlite_goes_from_folder_to_export(tmp_path, monkeypatch) -> None:
    """The whole command with the real parts, in-process: sample images with metadata and clues, tiny models."""
    from typer.testing import CliRunner

    from geocurate.cli import app
    from geocurate.cli.sample_data import generate_sample

    for key, value in {"GEOCURATE_DEMO_MODELS": "1", "GEOCURATE_SEGMENTER": "maskformer",
                       "GEOCURATE_SCORE_DTYPE": "float32", "GEOCURATE_DEVICE": "cpu",
                       "GEOCURATE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}.items():
        monkeypatch.setenv(key, value)
    reload_settings()
    sample = generate_sample(tmp_path / "sample", n_images=6, n_clues=5, seed=3)
    args = ["run", str(sample.images_dir), "--metadata", str(sample.metadata_csv), "--clues", str(sample.clues_jsonl),
            "--export", "first"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "run 1: done" in result.output
    state = pipeline.run_progress(1, get_settings())
    readable = len(sample.readable_images) - len(sample.invalid_coordinate_rows)
    assert state["summary"]["ingest"]["totals"]["added"] == readable
    assert state["summary"]["score"]["totals"]["scored"] == readable
    assert state["summary"]["export"]["batches"] == {"done": 1}
    assert (tmp_path / "exports" / "first" / "manifest.json").is_file()

    again = CliRunner().invoke(app, args[:-2] + ["--export", "second"])  # the same folder again: nothing new
    assert again.exit_code == 0, again.output
    second = pipeline.run_progress(2, get_settings())["summary"]
    assert second["ingest"]["totals"]["added"] == 0 and second["ingest"]["totals"]["duplicates"] == readable
    assert "score" not in second or second["score"]["totals"].get("scored", 0) == 0

    # A new threshold is a new scorer version: the next run's new images are scored under it, and the images scored
    # before join it from their stored class ratios, so that its export covers them too.
    monkeypatch.setenv("GEOCURATE_THRESHOLD", "0.2")
    reload_settings()
    more = generate_sample(tmp_path / "more", n_images=4, n_clues=4, seed=4)
    third = CliRunner().invoke(app, ["run", str(more.images_dir), "--metadata", str(more.metadata_csv),
                                     "--export", "third"])
    assert third.exit_code == 0, third.output + repr(third.exception)
    summary = pipeline.run_progress(3, get_settings())["summary"]
    added = len(more.readable_images) - len(more.invalid_coordinate_rows)
    assert summary["score"]["totals"]["scored"] == added
    assert summary["score"]["totals"]["carried_over"] == readable  # the score step's converge batch
    with session_scope(get_settings().database_url) as session:
        version = steps.scorer_version_of(session, 3)
        assert session.get(ScorerVersion, version).params["threshold"] == 0.2
        assert session.scalar(select(func.count()).select_from(Score).where(Score.scorer_version == version)) == (
            readable + added)


def test_status_tells_claims_whose_worker_died_from_live_ones(store_url: str) -> None:
    from db.status import store_status

    _, batch_ids = new_run(store_url, payloads=[{"items": [1]}, {"items": [2]}, {"items": [3]}])
    with session_scope(store_url) as session:
        batches.claim(session, batch_ids[0], "alive:1", lease_seconds=600)
        batches.claim(session, batch_ids[1], "dead:2", lease_seconds=60, now=utcnow() - timedelta(hours=1))
    with session_scope(store_url) as session:
        assert store_status(session).counts["batches"] == {"queued": 1, "claimed": 1, "claimed, lease expired": 1}
