"""Keeping a claim's lease alive while its batch runs: a heartbeat renews it every `heartbeat_seconds`, so a lease
only has to outlast one missed beat, not the longest batch (a training stage takes hours). A worker that dies stops
beating; its lease runs out within `lease_seconds` and the next reconcile re-queues the batch, so a dead worker's
batch is back in about lease + reconcile interval (90 s with the defaults), not after the longest batch."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

from db import batches
from db.batches import Claim
from db.engine import session_scope
from db.heartbeat import beating
from geocurate.settings import Settings

log = logging.getLogger(__name__)


def kept_alive(claim: Claim, settings: Settings) -> AbstractContextManager[None]:
    def renew() -> bool:
        """One beat; False once the batch is no longer ours (reconcile gave it to another worker)."""
        with session_scope(settings.database_url) as session:
            if batches.renew(session, claim, settings.lease_seconds):
                return True
        log.warning("batch %s: lease lost to another worker; its writes stay idempotent", claim.batch_id)
        return False

    return beating(renew, settings.heartbeat_seconds, f"lease-{claim.batch_id}")
