"""What the webhook receiver accepts, checked before anything acts on it: a body no larger than
`webhook_max_body_bytes`, JSON no deeper than a Label Studio event ever is, an action that is a string, and ids
that are Label Studio ids (positive 64-bit integers).

Anything else is the sender's mistake and gets 4xx with the reason; without these checks a list as the action, an
id past 64 bits (the database driver overflows) or a deeply nested body (the parser recurses) answered 500, and a
body of any size was read into memory.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

MAX_DEPTH = 32  # an annotation event nests about 6 levels (annotation → result → value → choices)
MAX_ID = 2**63 - 1  # Label Studio's ids are 64-bit integers
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
DELETED = "ANNOTATIONS_DELETED"


class Refused(Exception):
    """The request is answered `status` with `detail` and nothing else happens."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit`: from Content-Length before reading, and
    while reading a chunked body, so at most one transport chunk past the limit is ever held."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise Refused(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"body larger than {limit} bytes")
    return bytes(body)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_event(body: bytes) -> dict[str, Any]:
    """The event as a JSON object with a string action; Refused(400) says what is wrong otherwise."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise Refused(400, f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise Refused(400, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "body is not a JSON object")
    if _depth_exceeds(payload, MAX_DEPTH):
        raise Refused(400, f"JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(payload.get("action"), str):
        raise Refused(400, "action must be a string")
    return payload


def _id(value: Any, where: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_ID:
        raise Refused(400, f"{where} must be a Label Studio id (an integer from 1 to 2**63-1)")
    return value


def _ids(value: Any, where: str) -> list[int]:
    """Ids from an object with an id, a bare id, or a list of either; null or absent names none."""
    found = []
    for item in value if isinstance(value, list) else [] if value is None else [value]:
        if isinstance(item, dict):
            if item.get("id") is not None:
                found.append(_id(item["id"], f"{where}.id"))
        else:
            found.append(_id(item, where))
    return found


def named_ids(payload: dict[str, Any]) -> tuple[set[int], list[int]]:
    """(task ids, deleted annotation ids) an annotation event names; other events name nothing."""
    action = payload["action"]
    if action not in ANNOTATION_ACTIONS:
        return set(), []
    if action == DELETED:
        return set(), _ids(payload.get("annotations"), "annotations")
    tasks = set(_ids(payload.get("task"), "task"))
    annotations = payload.get("annotation")
    for item in annotations if isinstance(annotations, list) else [] if annotations is None else [annotations]:
        if not isinstance(item, dict):
            raise Refused(400, "annotation must be an object")
        _ids(item, "annotation")
        tasks.update(_ids(item.get("task"), "annotation.task"))
    return tasks, []
