"""The one place that talks to Label Studio's HTTP API: builds the SDK client from settings and retries transient
failures, so the rest of labeling/ sees plain calls that either succeed or raise one clear error.

Label Studio drops requests while it restarts or migrates and answers 5xx (or 429) under load; a push or pull
interrupted there must not fail a whole batch, so such failures are retried under geocurate's one retry policy
(geocurate/retry.py: exponential backoff with full jitter), bounded by `task_max_retries` and `retry_backoff_max`.
Anything else (other 4xx: bad token, bad config) is a mistake that retrying cannot fix and is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import httpx

from geocurate.errors import UserError
from geocurate.masking import mask_url, scrub
from geocurate.retry import backoff_delay, is_transient
from geocurate.settings import Settings

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_TIMEOUT_S = 300.0  # a 1,000-task import with predictions takes a while on a small server


class LabelStudioNotConfigured(UserError):
    """No Label Studio URL/key: borderline items stay in the local review queue (`geocurate review list`)."""


class LabelStudioUnavailable(UserError):
    """Label Studio kept failing (down or 5xx) after every retry; the store holds what was done, rerun to finish."""


class LabelStudioRejected(UserError):
    """Label Studio refused a request (4xx): wrong token, bad data or config; retrying cannot help."""


def make_client(settings: Settings) -> "LabelStudio":
    """The SDK client for the configured server. The SDK's own retries are off: `call` owns retrying."""
    from label_studio_sdk import LabelStudio

    if not settings.label_studio_url:
        raise LabelStudioNotConfigured(
            "GEOCURATE_LABEL_STUDIO_URL is not set; borderline items are in the local queue (geocurate review list)"
        )
    if settings.label_studio_api_key is None or not settings.label_studio_api_key.get_secret_value():
        raise LabelStudioNotConfigured("GEOCURATE_LABEL_STUDIO_API_KEY is not set (Label Studio: Account & Settings)")
    return LabelStudio(
        base_url=settings.label_studio_url.rstrip("/"),
        api_key=settings.label_studio_api_key.get_secret_value(),
        timeout=REQUEST_TIMEOUT_S,
        max_retries=0,
    )


def describe(exc: BaseException, settings: Settings) -> str:
    """One scrubbed line: a rejected request's body may quote what was sent (the webhook's secret header)."""
    status = getattr(exc, "status_code", None)
    text = str(getattr(exc, "body", None) or exc).strip().splitlines()
    first = scrub(text[0][:500], settings) if text else type(exc).__name__
    return f"HTTP {status}: {first}" if status else f"{type(exc).__name__}: {first}"


def unavailable(what: str, attempts: int, exc: BaseException, settings: Settings) -> LabelStudioUnavailable:
    """The last failure as one line naming the server, its password masked."""
    where = mask_url(settings.label_studio_url or "")
    head = (f"cannot reach Label Studio at {where}: {what} failed" if isinstance(exc, httpx.TransportError)
            else f"Label Studio at {where} failed {what}")
    return LabelStudioUnavailable(
        f"{head} {attempts} times ({describe(exc, settings)}); nothing is half-written: rerun when it is back"
    )


def call(what: str, fn: Callable[[], T], settings: Settings,
         before_retry: Callable[[], None] | None = None) -> T:
    """Run one Label Studio request, retrying transient failures; `what` names it in logs and errors.
    `before_retry` runs before each retry of a request that is not idempotent (an import whose answer was lost
    may have been applied): it reconciles, and a transient failure in it counts as a failed attempt."""
    from label_studio_sdk.core.api_error import ApiError

    attempts = max(0, settings.task_max_retries) + 1
    for attempt in range(attempts):
        try:
            if attempt and before_retry is not None:
                before_retry()
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc):
                if isinstance(exc, ApiError):
                    raise LabelStudioRejected(f"Label Studio refused {what}: {describe(exc, settings)}") from exc
                raise
            if attempt + 1 >= attempts:
                raise unavailable(what, attempts, exc, settings) from exc
            delay = backoff_delay(attempt, settings.retry_backoff_max)
            log.warning("Label Studio %s failed (%s); retry %d/%d in %.1fs", what, describe(exc, settings),
                        attempt + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
