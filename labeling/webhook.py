"""Webhook receiver: Label Studio's annotation events as hints to pull one task sooner.

Label Studio sends each webhook once and drops it if delivery fails, so the receiver only enqueues a pull of the
named task and the periodic `sync_annotations` pull stays the source of truth. Requests must carry the shared
secret (`X-Geocurate-Secret`, set on the webhook by `geocurate review push`); anything else gets 401 and
changes nothing, before a byte of the body is read; an authenticated but malformed event gets 4xx with the reason
(labeling/webhook_payload.py). It answers at once and pulls in the background, because Label Studio waits for the
answer while the annotator's save is in flight.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Header, HTTPException, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from geocurate.settings import Settings
from labeling.projects import SECRET_HEADER, WEBHOOK_PATH
from labeling.webhook_payload import Refused, named_ids, parse_event, read_body

log = logging.getLogger(__name__)

TaskHandler = Callable[[int], None]


def pull_task(task_id: int, settings: Settings) -> None:
    """Embedded mode (no broker): pull the task in this process."""
    from labeling.pull import pull_annotations

    try:
        pull_annotations(settings.database_url, task_ids=[task_id], settings=settings)
    except Exception as exc:  # noqa: BLE001 - a failed hint is not fatal: the periodic pull catches up
        from geocurate.failures import explain

        log.error("pull of Label Studio task %s after a webhook failed (%s); the periodic sync will retry",
                    task_id, explain(exc, settings)[0])


def task_ids_of(payload: dict[str, Any], settings: Settings) -> set[int]:
    """Label Studio task ids an event concerns (Refused when its ids are not ids). Deletions name only annotation
    ids: their tasks come from the store, which is exactly where the deleted annotations still are."""
    task_ids, annotation_ids = named_ids(payload)
    if not annotation_ids:
        return task_ids
    from db.engine import session_scope
    from db.models import Annotation, ReviewTask

    with session_scope(settings.database_url) as session:
        rows = session.scalars(
            select(ReviewTask.ls_task_id).join(Annotation, Annotation.review_task_id == ReviewTask.id)
            .where(Annotation.ls_annotation_id.in_(annotation_ids), ReviewTask.ls_task_id.is_not(None))
        )
        return set(rows)


def create_app(settings: Settings, on_task_changed: TaskHandler) -> FastAPI:
    """The receiver for the secret, body limit and store of `settings`; `on_task_changed(ls_task_id)` runs in the
    background for each task an event names. The caller chooses it (`pull_task` in this process, or a queued pull
    on the workers), so the Label Studio layer does not depend on Celery."""
    app = FastAPI(title="geocurate review webhook", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.post(WEBHOOK_PATH)
    async def receive(request: Request, background: BackgroundTasks,
                      secret: str | None = Header(None, alias=SECRET_HEADER)) -> dict[str, Any]:
        expected = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        if not expected or not secret or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong webhook secret")
        try:
            payload = parse_event(await read_body(request, settings.webhook_max_body_bytes))
            task_ids = await run_in_threadpool(task_ids_of, payload, settings)
        except Refused as refused:
            raise HTTPException(status_code=refused.status, detail=refused.detail) from None
        for task_id in sorted(task_ids):
            background.add_task(on_task_changed, task_id)
        return {"action": payload.get("action"), "queued": sorted(task_ids)}

    return app
