"""`geocurate worker`, `geocurate beat`, `geocurate reconcile`: the processes of a deployment with a broker, and its
repair pass by hand."""

from __future__ import annotations

import typer

from geocurate.errors import UserError
from geocurate.settings import Settings, get_settings


def worker(
    queues: str = typer.Option(None, "--queues", "-Q", help="Comma-separated queues (default: all). GPU machines: "
                               "score,train; others: ingest,review,export."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", help="Worker processes (each loads its own models)."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Node name (default: geocurate-PID@host)."),
) -> None:
    """Start a Celery worker (`celery -A workers.app worker` with acks_late, prefetch 1 and the queue prefix)."""
    import os

    from workers.routing import QUEUES

    settings = get_settings()
    if settings.embedded:
        raise UserError("a worker needs a broker: set GEOCURATE_BROKER_URL (embedded mode runs tasks in-process)")
    names = [q.strip() for q in (queues or ",".join(QUEUES)).split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown:
        raise UserError(f"unknown queue(s) {', '.join(unknown)}; the queues are {', '.join(QUEUES)}")
    if concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    check_services(settings)
    from workers.app import app, queue_name

    app.start([
        "worker", f"--queues={','.join(queue_name(settings, q) for q in names)}", f"--concurrency={concurrency}",
        f"--loglevel={loglevel}", "--pool=prefork", f"--hostname={hostname or f'geocurate-{os.getpid()}@%h'}",
        "--without-gossip", "--without-mingle",
    ])


def beat(loglevel: str = typer.Option("INFO", "--loglevel", "-l")) -> None:
    """Start the scheduler: reconcile (and the annotation sync when Label Studio is configured) every
    GEOCURATE_RECONCILE_INTERVAL seconds. Run exactly one per deployment."""
    settings = get_settings()
    if settings.embedded:
        raise UserError("beat needs a broker: set GEOCURATE_BROKER_URL")
    check_services(settings)
    from workers.app import app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}", f"--loglevel={loglevel}"])


def reconcile() -> None:
    """Run one reconcile pass now (what beat runs every GEOCURATE_RECONCILE_INTERVAL seconds): re-queue the batches
    of dead workers, re-send lost messages, move on runs whose step is over. Embedded: re-queued batches run here."""
    from workers.pipeline import reconcile as reconcile_once

    settings = get_settings()
    check_services(settings)
    counts = reconcile_once(settings)
    typer.echo(f"reconcile: {counts['requeued']} expired claims re-queued, {counts['resent']} lost messages re-sent, "
               f"{counts['advanced']} runs moved on")


def check_services(settings: Settings) -> None:
    """One line naming the broker or store that cannot be reached, before Celery would retry it for ever or a task
    would fail on it with a traceback."""
    from db.engine import check_connection
    from workers.broker import check_broker

    check_broker(settings)
    check_connection(settings.database_url)


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("beat")(beat)
    app.command("reconcile")(reconcile)
