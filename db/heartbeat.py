"""A heartbeat: a background thread that calls `beat()` every `interval` seconds while a long job runs, so that
others can tell a job that is alive from one whose process died (its beats stop). A beat that raises is retried at
the next interval (the store may be briefly away; a lease outlasts a few missed beats); a beat that returns False
ends the heartbeat (what it kept alive is no longer ours)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def worker_id() -> str:
    """Who holds a claim or builds an export: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local(holder: str | None) -> bool:
    """True when `holder` names a process on this host that no longer exists (its claim can be taken at once)."""
    if not holder or ":" not in holder:
        return False
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def beating(beat: Callable[[], bool | None], interval: float, name: str) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                if beat() is False:
                    return
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("%s: heartbeat failed: %s", name, exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
