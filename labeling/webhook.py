"""Webhook receiver: Label Studio's annotation events as hints to pull one task sooner.

Label Studio sends each webhook once and drops it if delivery fails, so the receiver only enqueues a pull of the
named task and the periodic `sync_annotations` pull stays the source of truth. Requests must carry the shared
secret (`X-Geocurate-Secret`, set on the webhook by `geocurate review push`); anything else gets 401 and
changes nothing. It answers at once and pulls in the background, because Label Studio waits for the answer
while the annotator's save is in flight.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Header, HTTPException, Request
from sqlalchemy import select

from geocurate.settings import Settings, get_settings
from labeling.projects import SECRET_HEADER, WEBHOOK_PATH

log = logging.getLogger(__name__)

TaskHandler = Callable[[int], None]
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}


def pull_task(task_id: int) -> None:
    """Embedded mode (no broker): pull the task in this process."""
    from labeling.pull import pull_annotations

    try:
        pull_annotations(task_ids=[task_id])
    except Exception:  # noqa: BLE001 - a failed hint is not fatal: the periodic pull catches up
        log.exception("pull of Label Studio task %s after a webhook failed; the periodic sync will retry", task_id)


def default_handler(settings: Settings | None = None) -> TaskHandler:
    """In-process pull when embedded; with a broker, the workers' `sync_annotations` task."""
    settings = settings or get_settings()
    if settings.embedded:
        return pull_task
    from workers.tasks import sync_annotations

    return lambda task_id: sync_annotations.delay(task_ids=[task_id])


def _ids(value: Any) -> Iterable[int]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), int):
            yield item["id"]
        elif isinstance(item, int):
            yield item


def task_ids_of(payload: dict[str, Any], settings: Settings) -> set[int]:
    """Label Studio task ids an event concerns. Deletions name only annotation ids: their tasks come from the
    store, which is exactly where the deleted annotations still are."""
    action = payload.get("action")
    if action not in ANNOTATION_ACTIONS:
        return set()
    if action != "ANNOTATIONS_DELETED":
        found = set(_ids(payload.get("task") or []))
        annotation = payload.get("annotation") or []
        for item in annotation if isinstance(annotation, list) else [annotation]:
            if isinstance(item, dict) and isinstance(item.get("task"), int):
                found.add(item["task"])
        return found
    annotation_ids = list(_ids(payload.get("annotations") or []))
    if not annotation_ids:
        return set()
    from db.engine import session_scope
    from db.models import Annotation, ReviewTask

    with session_scope(settings.database_url) as session:
        rows = session.scalars(
            select(ReviewTask.ls_task_id).join(Annotation, Annotation.review_task_id == ReviewTask.id)
            .where(Annotation.ls_annotation_id.in_(annotation_ids), ReviewTask.ls_task_id.is_not(None))
        )
        return set(rows)


def create_app(on_task_changed: TaskHandler | None = None) -> FastAPI:
    """The receiver; `on_task_changed(ls_task_id)` runs in the background for each task an event names
    (default: `default_handler()`, resolved on the first event so the settings of the running process apply)."""
    app = FastAPI(title="geocurate review webhook", docs_url=None, redoc_url=None, openapi_url=None)
    handler: list[TaskHandler] = [on_task_changed] if on_task_changed else []

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.post(WEBHOOK_PATH)
    async def receive(request: Request, background: BackgroundTasks,
                      secret: str | None = Header(None, alias=SECRET_HEADER)) -> dict[str, Any]:
        settings = get_settings()
        expected = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        if not expected or not secret or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong webhook secret")
        try:
            payload = await request.json()
        except ValueError:
            raise HTTPException(status_code=400, detail="body is not JSON") from None
        if not isinstance(payload, dict):
            raise HTTPException(status_code=400, detail="body is not a JSON object")
        task_ids = task_ids_of(payload, settings)
        if task_ids and not handler:
            handler.append(default_handler(settings))
        for task_id in sorted(task_ids):
            background.add_task(handler[0], task_id)
        return {"action": payload.get("action"), "queued": sorted(task_ids)}

    return app
