"""The Celery app, configured from geocurate settings (`celery -A workers.app worker`; `geocurate worker` wraps it).

Without a broker URL the app is *embedded*: tasks run in-process through the same code (eager), so the demo needs no
server. With one, messages only carry batch ids: the store holds the work, its claims and its outcome, so results are
ignored and no chord or result-backend state can lose a pipeline (celery issues 5229, 6220, 1700).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu import Queue

from geocurate.settings import Settings, get_settings
from workers.routing import QUEUES, TASK_ROUTES

log = logging.getLogger(__name__)

EMBEDDED_BROKER = "memory://"


def check_timeouts(settings: Settings) -> None:
    """A Redis message not acked within the visibility timeout is delivered again, so it must outlast every retry
    delay; the lease is renewed on every heartbeat while a batch runs, so it only has to outlast one heartbeat, and a
    heartbeat as long as the lease would let every working worker's claim run out."""
    if settings.heartbeat_seconds >= settings.lease_seconds:
        raise ValueError(
            f"GEOCURATE_HEARTBEAT_SECONDS ({settings.heartbeat_seconds}s) must be below GEOCURATE_LEASE_SECONDS "
            f"({settings.lease_seconds}s): a claim is renewed every heartbeat and lost when a lease passes without one"
        )
    if settings.retry_backoff_max >= settings.visibility_timeout:
        raise ValueError(
            f"GEOCURATE_RETRY_BACKOFF_MAX ({settings.retry_backoff_max}s) must be below "
            f"GEOCURATE_VISIBILITY_TIMEOUT ({settings.visibility_timeout}s): a longer ETA is redelivered early"
        )
    if settings.lease_seconds >= settings.visibility_timeout:
        raise ValueError(
            f"GEOCURATE_LEASE_SECONDS ({settings.lease_seconds}s) must be below GEOCURATE_VISIBILITY_TIMEOUT "
            f"({settings.visibility_timeout}s)"
        )


def queue_name(settings: Settings, queue: str) -> str:
    return f"{settings.queue_prefix}{queue}"


def celery_config(settings: Settings) -> dict[str, Any]:
    check_timeouts(settings)
    broker = settings.broker_url or EMBEDDED_BROKER
    backend = settings.result_backend
    if backend is None and broker.startswith(("redis://", "rediss://")):
        backend = broker
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.queue_prefix and broker.startswith(("redis://", "rediss://")):
        transport["global_keyprefix"] = settings.queue_prefix  # unacked sets and bindings too, not only queues
    return dict(
        broker_url=broker,
        result_backend=backend,
        task_ignore_result=True,  # progress and outcome are rows in the store
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,  # a message is acked after its batch, not before
        task_reject_on_worker_lost=True,  # ... and a child killed mid-batch (OOM) puts it back instead of acking it
        worker_prefetch_multiplier=1,  # long ML tasks: never hold a second message behind a busy child
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_cancel_long_running_tasks_on_connection_loss=False,  # the claim makes the redelivery a no-op
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_queues=[Queue(queue_name(settings, q), routing_key=queue_name(settings, q)) for q in QUEUES],
        task_default_queue=queue_name(settings, "ingest"),
        task_routes={task: {"queue": queue_name(settings, r["queue"])} for task, r in TASK_ROUTES.items()},
        task_always_eager=settings.embedded,
        task_eager_propagates=False,  # a failed batch is recorded in the store; the run goes on
        task_store_eager_result=False,
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
    )


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """A tick that waited in the queue longer than one interval (every worker was busy) is dropped: the next tick
    does the same work, and a pile of them would only run it again and again once a worker is free."""
    every = {"schedule": float(settings.reconcile_interval), "options": {"expires": float(settings.reconcile_interval)}}
    schedule = {"reconcile": {"task": "workers.tasks.reconcile", **every}}
    if settings.label_studio_url:
        schedule["sync-annotations"] = {"task": "workers.tasks.sync_annotations", **every}
    return schedule


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("geocurate", include=["workers.tasks"], set_as_current=False)
    celery_app.conf.update(celery_config(settings))
    return celery_app


def config_key(settings: Settings) -> tuple:
    return (settings.broker_url, settings.result_backend, settings.queue_prefix, settings.visibility_timeout)


app = make_app()
app.set_current()
app.set_default()
_APP_KEY = config_key(get_settings())
_SENDERS: dict[tuple, Celery] = {}


def sender_for(settings: Settings) -> Celery:
    """The app that sends messages for these settings: the worker's own app, or (a test or CLI whose settings changed
    after import) one built for them. Messages are sent by task name, so the sender needs no task registry."""
    key = config_key(settings)
    if key == _APP_KEY:
        return app
    if key not in _SENDERS:
        _SENDERS[key] = make_app(settings)
    return _SENDERS[key]


def _scrub_log_handlers(logger: logging.Logger, **_: Any) -> None:
    """Worker and beat logs (their own, the tasks', and stdout redirected into them) are scrubbed of the settings'
    secrets: a connection error or a task's exception may quote a URL with its password."""
    from geocurate.masking import scrub_logs

    scrub_logs(logger)


signals.after_setup_logger.connect(_scrub_log_handlers)
signals.after_setup_task_logger.connect(_scrub_log_handlers)


@signals.celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, **_: Any) -> None:
    """Runs in the worker's main process before the pool forks: children inherit which queues they serve."""
    from workers import process

    process.CONSUMED_QUEUES.update(instance.app.amqp.queues.consume_from.keys())


@signals.worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    from workers import process

    process.init_worker_process(get_settings())


@signals.task_prerun.connect
def _before_task(**_: Any) -> None:
    from workers import process

    process.before_task()


@signals.worker_shutting_down.connect
def _hand_back_running_batches(**_: Any) -> None:
    from workers import process

    process.hand_back_on_shutdown()
