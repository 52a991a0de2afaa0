"""Keeping a lease alive while a batch runs, so a lease only has to outlast one renewal interval, not the longest
batch (a training stage takes hours). A dead worker stops renewing and reconcile re-queues its batch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from db import batches
from db.batches import Claim
from db.engine import session_scope

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3


@contextmanager
def kept_alive(claim: Claim, database_url: str, lease_seconds: float) -> Iterator[None]:
    stop = threading.Event()
    interval = max(lease_seconds / RENEWALS_PER_LEASE, 0.2)

    def renew_until_stopped() -> None:
        while not stop.wait(interval):
            try:
                with session_scope(database_url) as session:
                    if not batches.renew(session, claim, lease_seconds):
                        log.warning("batch %s: lease lost to another worker; its writes stay idempotent",
                                    claim.batch_id)
                        return
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried at the next interval
                log.warning("batch %s: lease renewal failed: %s", claim.batch_id, exc)

    thread = threading.Thread(target=renew_until_stopped, name=f"lease-{claim.batch_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
