"""Keeping a claim's lease alive while its batch runs: a heartbeat renews it every `heartbeat_seconds`, so a lease
only has to outlast one missed beat, not the longest batch (a training stage takes hours). A worker that dies stops
beating; its lease runs out within `lease_seconds` and the next reconcile re-queues the batch, so a dead worker's
batch is back in about lease + reconcile interval (90 s with the defaults), not after the longest batch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from db import batches
from db.batches import Claim
from db.engine import session_scope
from geocurate.settings import Settings

log = logging.getLogger(__name__)


@contextmanager
def kept_alive(claim: Claim, settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    interval = settings.heartbeat_seconds

    def renew_until_stopped() -> None:
        while not stop.wait(interval):
            if not _renew(claim, settings):
                return

    thread = threading.Thread(target=renew_until_stopped, name=f"lease-{claim.batch_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


def _renew(claim: Claim, settings: Settings) -> bool:
    """One heartbeat; False once the batch is no longer ours. A failed renewal (store briefly away) is retried at
    the next beat: the lease outlasts a few of them."""
    try:
        with session_scope(settings.database_url) as session:
            if batches.renew(session, claim, settings.lease_seconds):
                return True
    except Exception as exc:  # noqa: BLE001 - retried at the next beat
        log.warning("batch %s: lease renewal failed: %s", claim.batch_id, exc)
        return True
    log.warning("batch %s: lease lost to another worker; its writes stay idempotent", claim.batch_id)
    return False
