"""The one retry policy: which failures are worth another try, and how long to wait before it.

Two loops retry: a Celery task that failed (workers/tasks.py) and a single Label Studio request (labeling/client.py).
They used to disagree (one retried HTTP 429, the other gave up on it), so a rate-limited push failed as a task but
was retried as a request. Both now ask this module. Exception classes are recognised by their qualified names, so
this module imports neither SQLAlchemy, httpx, the Label Studio SDK nor Celery: an exception can only come from a
library that is already loaded.
"""

from __future__ import annotations

import random

BACKOFF_BASE_S = 2.0  # retry n waits a random time in [0, min(cap, 2 * 2**n)] seconds

# A store that dropped the connection or is restarting, a server that did not answer: the same call can succeed.
TRANSIENT_CLASSES = frozenset({
    "sqlalchemy.exc.OperationalError",
    "sqlalchemy.exc.InterfaceError",
    "db.engine.StoreUnavailable",
    "httpx.TransportError",
    "requests.exceptions.ConnectionError",
    "requests.exceptions.Timeout",
    "builtins.ConnectionError",
    "builtins.TimeoutError",
})
TOO_MANY_REQUESTS = 429  # "slow down": the request was fine, the server wants it later


def _class_names(exc: BaseException) -> set[str]:
    return {f"{kind.__module__}.{kind.__qualname__}" for kind in type(exc).__mro__}


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries: Label Studio SDK errors have `status_code`, httpx's `response`."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the database or a server was briefly unreachable, overloaded (5xx) or asked us to slow down
    (429). Bad input and rejected requests (other 4xx) are not: retrying cannot fix them."""
    names = _class_names(exc)
    if names & TRANSIENT_CLASSES:
        return True
    if "sqlalchemy.exc.DBAPIError" in names and getattr(exc, "connection_invalidated", False):
        return True
    status = http_status(exc)
    return status is not None and (status >= 500 or status == TOO_MANY_REQUESTS)


def backoff_delay(attempt: int, cap: float) -> float:
    """Seconds to wait before retry `attempt` (0 for the first): full jitter, uniform in
    [0, min(cap, base * 2**attempt)], so clients that failed together do not come back together."""
    return random.uniform(0, max(0.0, min(cap, BACKOFF_BASE_S * 2 ** min(attempt, 32))))
