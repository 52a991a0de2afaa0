"""`geocurate worker`, `geocurate beat`: the processes of a deployment with a broker."""

from __future__ import annotations

import typer

from geocurate.errors import UserError
from geocurate.settings import get_settings


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
    from workers.app import app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}", f"--loglevel={loglevel}"])


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("beat")(beat)
