"""`geocurate review route|push|pull|list|decide|stats|webhook`: human review of what the machine cannot decide."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from geocurate.errors import UserError
from geocurate.settings import get_settings

review_app = typer.Typer(help="Human review in Label Studio (or the local review queue).", no_args_is_help=True)

KINDS = {"images": "image", "clues": "clue"}


class Kind(str, Enum):
    images = "images"
    clues = "clues"


def _kind(kind: Kind | None) -> str | None:
    return KINDS[kind.value] if kind else None


def _store() -> str:
    """The store's URL, once it answers: an unreachable store is one line before anything else is touched."""
    from db.engine import check_connection

    url = get_settings().database_url
    check_connection(url)
    return url


@review_app.command("route")
def route(scorer_version: str = typer.Option(None, help="Scorer version whose band to route; default: the newest.")) -> None:
    """Queue borderline images (score in the review band) and clues assessed as review."""
    from sqlalchemy import select

    from db.engine import session_scope
    from db.models import ScorerVersion
    from labeling.routing import route_for_review

    with session_scope(_store()) as session:
        version = scorer_version or session.scalar(
            select(ScorerVersion.version).order_by(ScorerVersion.created_at.desc()).limit(1)
        )
        if version is None:
            raise UserError("no scorer version in the store yet: run scoring first, or pass --scorer-version")
        summary = route_for_review(session, version, get_settings())
    typer.echo(f"queued {summary.images_queued} new images ({summary.images_in_band} in the band of {version}) "
               f"and {summary.clues_queued} new clues ({summary.clues_in_review} in review)")


@review_app.command("push")
def push(kind: Kind = typer.Option(None, help="Only images or only clues."),
         limit: int = typer.Option(None, min=1, help="At most this many tasks per kind, most uncertain first.")) -> None:
    """Create Label Studio tasks for queued items (never twice), with the machine's prediction."""
    from labeling.push import push_tasks

    summary = push_tasks(_store(), kind=_kind(kind), limit=limit, settings=get_settings())
    projects = ", ".join(f"{k}: project {v}" for k, v in summary.projects.items()) or "nothing to push"
    typer.echo(f"created {summary.created} tasks, adopted {summary.reconciled} existing, "
               f"quarantined {summary.quarantined} ({projects})")


@review_app.command("pull")
def pull() -> None:
    """Bring every annotation back into the store and resolve each task's decision."""
    from labeling.pull import pull_annotations

    s = pull_annotations(_store(), settings=get_settings())
    typer.echo(f"pulled {s.tasks} tasks, {s.annotations} annotations ({s.deleted} deleted since last pull): "
               f"{s.done} done, {s.conflicted} conflicted, {s.pending} pending; {s.changed} decisions changed"
               + (f"; {s.quarantined} unknown countries quarantined" if s.quarantined else ""))


WIDE_TABLE = 120  # columns from which `review list` also shows priority, Label Studio task and reason

@review_app.command("list")
def list_queue(kind: Kind = typer.Option(None, help="Only images or only clues."),
               state: list[str] = typer.Option(["pending", "conflicted"], help="States to show (repeatable): pending, "
                                               "conflicted, done, retired."),
               limit: int = typer.Option(50, min=1, help="Rows to show.")) -> None:
    """The review queue, most uncertain first (the local queue when Label Studio is not configured): each item's
    file name (or clue text), country and score, so a reviewer can open the file and decide."""
    from curation.files import local_path
    from db.engine import session_scope
    from db.review import queue_details, review_queue

    with session_scope(_store()) as session:
        rows = review_queue(session, _kind(kind), states=state, limit=limit)
        details = queue_details(session, rows)
        shown = [(r.id, r.item_kind, r.item_id, r.priority, r.state, r.final_label, r.ls_task_id, r.reason,
                  r.scorer_version) for r in rows]
    console = Console()
    wide = console.width >= WIDE_TABLE  # priority, Label Studio task and reason only where they fit
    table = Table(title="review queue")
    for column in ("id", "item"):
        table.add_column(column, no_wrap=True)
    table.add_column("file / clue", overflow="fold", ratio=1)
    for column in ("country", "score") + (("priority",) if wide else ()):
        table.add_column(column, no_wrap=True)
    table.add_column("state", no_wrap=True, min_width=10)  # what a reader scans for: never cut
    table.add_column("label", no_wrap=True)
    if wide:
        table.add_column("LS task", no_wrap=True)
        table.add_column("reason", overflow="fold", ratio=2)
    for task_id, item_kind, item_id, priority, task_state, label, ls_task_id, reason, version in shown:
        what, country, score = details.get(task_id, ("", None, None))
        if item_kind == "image" and what:
            what = Path(local_path(what)).name
        cells = [str(task_id), f"{item_kind} {item_id}", what[:60], country or "",
                 f"{score:.3f}" if score is not None else ""]
        cells += [f"{priority:.2f}" if priority is not None else ""] if wide else []
        cells += [task_state, label or ""]
        cells += [str(ls_task_id or ""), reason or ""] if wide else []
        table.add_row(*cells)
    console.print(table)
    if not shown:
        typer.echo(f"no {'/'.join(state)} review task" + (f" of kind {_kind(kind)}" if kind else ""))


@review_app.command("decide")
def decide(review_task_id: int = typer.Argument(..., help="Row id from `geocurate review list`."),
           label: str = typer.Argument(..., help="locatable / not_locatable / unusable, or geo_clue / no_geo_clue."),
           country: str = typer.Option(None, help="Country (ISO code or English name) the reviewer recognised.")) -> None:
    """Record a decision from the local queue (teams reviewing without Label Studio)."""
    from geocurate.countries import country_code
    from db.engine import session_scope
    from db.models import ReviewTask
    from db.review import set_decision
    from labeling.configs import interface_for

    with session_scope(_store()) as session:
        task = session.get(ReviewTask, review_task_id)
        if task is None:
            raise UserError(f"no review task {review_task_id}; see `geocurate review list`")
        if task.ls_task_id is not None:
            raise UserError(f"review task {review_task_id} is in Label Studio (task {task.ls_task_id}): decide there")
        labels = interface_for(task.item_kind).labels
        if label not in labels:
            raise UserError(f"label for a {task.item_kind} must be one of {', '.join(labels)}")
        code = country_code(country) if country else None
        if country and code is None:
            raise UserError(f"unknown country {country!r}; give an ISO code (PL) or an English name (Poland)")
        set_decision(session, task, "done", label, code)
    typer.echo(f"review task {review_task_id}: {label}" + (f" ({code})" if code else ""))


@review_app.command("stats")
def stats() -> None:
    """Per-project counts (pending, done, conflicted), annotator agreement and time per task."""
    from db.engine import session_scope
    from labeling.stats import review_stats

    with session_scope(_store()) as session:
        result = review_stats(session, get_settings().review_project_prefix)
    for p in result:
        states = p.states
        kappa = (f"{p.kappa_kind} kappa {p.kappa:.2f} over {p.multi_annotated_tasks} tasks" if p.kappa is not None
                 else "agreement n/a (needs overlap > 1)")
        seconds = f"{p.mean_seconds_per_task:.1f} s per task" if p.mean_seconds_per_task else "time per task n/a"
        typer.echo(f"{p.project_title}: pending {states.get('pending', 0)} "
                   f"({states.get('pending_in_label_studio', 0)} in Label Studio), done {states.get('done', 0)}, "
                   f"conflicted {states.get('conflicted', 0)}"
                   + (f", retired {states['retired']}" if states.get("retired") else "")
                   + f"; {p.annotations} annotations; {kappa}; {seconds}")


def pull_on_webhook(settings):
    """What an annotation event triggers: a pull of that task, in this process when embedded, else on the workers
    (their `sync_annotations` task), so the receiver answers Label Studio at once."""
    if settings.embedded:
        from labeling.webhook import pull_task

        return lambda task_id: pull_task(task_id, settings)
    from workers.tasks import sync_annotations

    return lambda task_id: sync_annotations.delay(task_ids=[task_id])


@review_app.command("webhook")
def webhook(host: str = typer.Option(None, help="Bind address (default GEOCURATE_WEBHOOK_HOST)."),
            port: int = typer.Option(None, help="Port (default GEOCURATE_WEBHOOK_PORT).")) -> None:
    """Receive Label Studio's annotation webhooks and pull the annotated task."""
    import logging

    import uvicorn

    from geocurate.masking import scrub_logs
    from labeling.webhook import create_app

    settings = get_settings()
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise UserError("GEOCURATE_WEBHOOK_SECRET is not set: the receiver would reject every webhook")
    config = uvicorn.Config(create_app(settings, pull_on_webhook(settings)), host=host or settings.webhook_host,
                            port=port or settings.webhook_port, log_level="info")  # configures uvicorn's logging
    scrub_logs(*(logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")))
    uvicorn.Server(config).run()


def register(app: typer.Typer, ingest_app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
