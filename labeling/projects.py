"""Label Studio projects and their task listings: found by title (so every push and pull agrees on the project
without storing anything in Label Studio), created with the review interface, and paged through completely."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from labeling.client import call
from labeling.configs import ReviewInterface
from labeling.guidelines import guidelines_html
from geocurate.settings import Settings

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

PAGE_SIZE = 500
WEBHOOK_PATH = "/webhook"
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
SECRET_HEADER = "X-Geocurate-Secret"


def find_project(client: "LabelStudio", interface: ReviewInterface, settings: Settings) -> int | None:
    title = interface.project_title(settings.review_project_prefix)
    pager = call("list projects", lambda: client.projects.list(title=title, page_size=100), settings)
    for project in pager.items or []:
        if project.title == title:
            return project.id
    return None


def ensure_project(client: "LabelStudio", interface: ReviewInterface, settings: Settings) -> int:
    """The project for this interface, created on first use; its overlap follows `review_overlap`."""
    project_id = find_project(client, interface, settings)
    title = interface.project_title(settings.review_project_prefix)
    options: dict[str, Any] = dict(
        maximum_annotations=max(1, settings.review_overlap),
        show_collab_predictions=True,
        show_overlap_first=settings.review_overlap > 1,
        expert_instruction=guidelines_html(interface.kind),
        show_instruction=True,
    )
    if project_id is None:
        project = call("create project", lambda: client.projects.create(
            title=title, description=interface.description, label_config=interface.xml, **options
        ), settings)
        project_id = project.id
    else:
        call("update project", lambda: client.projects.update(id=project_id, **options), settings)
    if settings.webhook_url and settings.webhook_secret is not None:
        ensure_webhook(client, project_id, settings)
    return project_id


def ensure_local_storage(client: "LabelStudio", project_id: int, path: str, settings: Settings) -> None:
    """Label Studio serves /data/local-files/ only for files under a local-files storage of the project, and a
    storage must be a subdirectory of its document root. It is never synced (geocurate imports the tasks itself):
    it only grants the project access to that directory."""
    storages = call("list local storages", lambda: client.import_storage.local.list(project=project_id), settings)
    if any(getattr(s, "path", None) == path for s in storages or []):
        return
    call("create local storage", lambda: client.import_storage.local.create(
        project=project_id, path=path, title="geocurate images", use_blob_urls=False
    ), settings)


def ensure_webhook(client: "LabelStudio", project_id: int, settings: Settings) -> None:
    url = settings.webhook_url
    hooks = call("list webhooks", lambda: client.webhooks.list(project=str(project_id)), settings)
    headers = {SECRET_HEADER: settings.webhook_secret.get_secret_value()}
    for hook in hooks or []:
        if hook.url == url and getattr(hook, "project", project_id) == project_id:
            call("update webhook", lambda: client.webhooks.update(
                id=hook.id, url=url, headers=headers, actions=WEBHOOK_ACTIONS, send_payload=True, is_active=True,
                send_for_all_actions=False), settings)
            return
    call("create webhook", lambda: client.webhooks.create(
        url=url, project=project_id, headers=headers, actions=WEBHOOK_ACTIONS, send_payload=True, is_active=True,
        send_for_all_actions=False,
    ), settings)


def iter_task_pages(client: "LabelStudio", project_id: int, settings: Settings, fields: str = "all",
                    page_size: int | None = None) -> Iterator[list[Any]]:
    """Every task of the project, page by page; each page is one retried request, and the end is found from the
    reported total (Label Studio answers 404 past the last page)."""
    page, seen = 1, 0
    page_size = page_size or PAGE_SIZE
    while True:
        current = page
        response = call(f"list tasks page {current}", lambda: client.tasks.list(
            project=project_id, page=current, page_size=page_size, fields=fields
        ), settings)
        items = list(response.items or [])
        if items:
            yield items
        seen += len(items)
        total = getattr(response.response, "total", None)
        if not items or len(items) < page_size or (total is not None and seen >= total):
            return
        page += 1


def iter_tasks(client: "LabelStudio", project_id: int, settings: Settings, fields: str = "all",
               page_size: int | None = None) -> Iterator[Any]:
    for items in iter_task_pages(client, project_id, settings, fields, page_size):
        yield from items


def task_index(client: "LabelStudio", project_id: int, settings: Settings) -> dict[str, int]:
    """geocurate id (e.g. "image:12") → Label Studio task id, for reconciling a push against what exists."""
    index: dict[str, int] = {}
    for task in iter_tasks(client, project_id, settings, fields="task_only"):
        geocurate_id = (task.data or {}).get("geocurate_id")
        if geocurate_id:
            index.setdefault(str(geocurate_id), task.id)
    return index
