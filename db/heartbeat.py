"""A heartbeat: a background thread that calls `beat()` every `interval` seconds while a long job runs, so that
others can tell a job that is alive from one whose process died (its beats stop)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def beating(beat: Callable[[], None], interval: float, name: str) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next interval
                log.warning("%s: heartbeat failed: %s", name, exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
