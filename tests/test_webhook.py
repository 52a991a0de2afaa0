"""The webhook receiver against malformed and oversized requests, over real sockets to a real uvicorn: every refusal
is a 4xx with its reason (never a 500), a body past the limit is refused without being read to its end, and a
request without the secret is refused before any of that."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from geocurate.settings import get_settings, reload_settings
from tests.asgi_server import serving

SECRET = "hook-s3cret"
AUTH = {"X-Geocurate-Secret": SECRET}
LIMIT = 8_000


@pytest.fixture
def receiver(sqlite_store, monkeypatch) -> Iterator[tuple[str, list[int]]]:
    """(base URL, task ids handed to the pull handler)."""
    from labeling.webhook import create_app

    monkeypatch.setenv("GEOCURATE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("GEOCURATE_WEBHOOK_MAX_BODY_BYTES", str(LIMIT))
    reload_settings()
    pulled: list[int] = []
    with serving(create_app(get_settings(), pulled.append)) as url:
        yield url, pulled


def post(url: str, body: bytes | dict, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(f"{url}/webhook", content=content, headers={"Content-Type": "application/json", **(headers or {})})


def nested(depth: int) -> bytes:
    """An annotation event with `depth` nested lists inside (the event object is one more level)."""
    return b'{"action": "ANNOTATION_CREATED", "task": {"id": 7}, "extra": ' + b"[" * depth + b"]" * depth + b"}"


def raw_request(url: str, head: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode())
    return sock


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def eventually(condition, timeout: float = 10.0) -> bool:
    """The pull handler runs as a background task, after the answer has been sent."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


CREATED = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "task": 42}, "task": {"id": 42}}


@pytest.mark.parametrize("event, reason", [
    ({"action": ["ANNOTATION_CREATED"], "task": {"id": 1}}, "action must be a string"),
    ({"action": {"x": 1}}, "action must be a string"),
    ({"task": {"id": 1}}, "action must be a string"),
    ({"action": "ANNOTATION_CREATED", "task": {"id": 2**64}}, "task.id must be a Label Studio id"),
    ({"action": "ANNOTATION_CREATED", "task": {"id": 2**63}}, "task.id must be a Label Studio id"),
    ({"action": "ANNOTATION_CREATED", "task": {"id": -3}}, "task.id must be a Label Studio id"),
    ({"action": "ANNOTATION_CREATED", "task": {"id": "42"}}, "task.id must be a Label Studio id"),
    ({"action": "ANNOTATION_CREATED", "task": {"id": True}}, "task.id must be a Label Studio id"),
    ({"action": "ANNOTATION_CREATED", "task": {"id": 1.5}}, "task.id must be a Label Studio id"),
    ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 5, "task": 10**30}}, "annotation.task must be"),
    ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 10**30, "task": 5}}, "annotation.id must be"),
    ({"action": "ANNOTATION_UPDATED", "annotation": "5"}, "annotation must be an object"),
    ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2**70}]}, "annotations.id must be"),
    ({"action": "ANNOTATIONS_DELETED", "annotations": [[1]]}, "annotations must be a Label Studio id"),
])
def test_malformed_events_are_400_with_the_reason_and_pull_nothing(receiver, event, reason):
    url, pulled = receiver
    answer = post(url, event, AUTH)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["detail"]
    assert pulled == []


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"ANNOTATION_CREATED"', "not a JSON object"),
    (b"1" * 5_000, "not JSON"),  # a number past Python's int digit limit
    (nested(32), "nested deeper"),
    (nested(1_900), "nested deeper"),  # deeper than the recursion limit: the parser itself gives up
])
def test_bodies_that_are_not_a_shallow_json_object_are_400(receiver, body, reason):
    url, pulled = receiver
    answer = post(url, body, AUTH)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["detail"]
    assert pulled == []


def test_the_largest_64_bit_id_and_the_deepest_allowed_event_are_accepted(receiver):
    url, pulled = receiver
    top = 2**63 - 1
    answer = post(url, {"action": "ANNOTATION_CREATED", "annotation": {"id": top, "task": top}}, AUTH)
    assert answer.status_code == 200 and answer.json()["queued"] == [top]
    deleted = post(url, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": top}]}, AUTH)
    assert deleted.status_code == 200 and deleted.json()["queued"] == []  # the store knows no such annotation
    assert post(url, nested(31), AUTH).status_code == 200
    assert eventually(lambda: pulled == [top, 7]), pulled


def test_content_length_over_the_limit_is_413_before_the_body_is_sent(receiver):
    url, pulled = receiver
    sock = raw_request(url, f"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Geocurate-Secret: {SECRET}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n")
    with sock:
        assert status_of(sock) == 413  # answered although not one byte of the body was sent
    assert post(url, b"x" * (LIMIT + 1), AUTH).status_code == 413
    assert pulled == []


def test_a_chunked_body_is_refused_once_it_passes_the_limit_not_read_to_its_end(receiver):
    url, pulled = receiver
    sock = raw_request(url, f"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Geocurate-Secret: {SECRET}\r\n"
                            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk, sent, answered = b" " * 1_000, 0, False
    with sock:
        while sent < 200 * LIMIT:  # a client that never stops sending
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0.05)[0]:
                answered = True
                break
        assert answered or sent < 200 * LIMIT, "the server kept reading past the limit"
        assert status_of(sock) == 413
    assert sent <= LIMIT + 20 * len(chunk), f"{sent} bytes were sent before the refusal"
    assert pulled == []


def test_a_chunked_body_under_the_limit_is_read_whole(receiver):
    url, pulled = receiver
    body = json.dumps(CREATED).encode()
    answer = httpx.post(f"{url}/webhook", content=iter([body[:10], body[10:]]), headers=AUTH)  # no Content-Length
    assert answer.status_code == 200 and answer.json()["queued"] == [42]
    assert eventually(lambda: pulled == [42]), pulled


def test_without_the_secret_everything_is_401_before_the_body_is_looked_at(receiver):
    url, pulled = receiver
    for headers in ({}, {"X-Geocurate-Secret": "wrong"}):
        assert post(url, b"{not json", headers).status_code == 401
        assert post(url, {"action": ["x"]}, headers).status_code == 401
        assert post(url, b"x" * (LIMIT + 1), headers).status_code == 401
        assert post(url, nested(1_900), headers).status_code == 401
    sock = raw_request(url, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    with sock:
        assert status_of(sock) == 401
    assert pulled == []
