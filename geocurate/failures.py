"""What the user sees when a command fails: one scrubbed line and a non-zero exit status, never a traceback (unless
GEOCURATE_DEBUG is set), and never a secret.

A service that cannot be reached (store, broker, Label Studio) is named by its URL with the password masked, so
the operator sees at once which setting to fix. Exception classes are looked up in modules already imported:
an exception cannot come from a library the process never loaded, and the CLI stays fast.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import TYPE_CHECKING

from geocurate.errors import UserError
from geocurate.masking import mask_url, scrub

if TYPE_CHECKING:
    from geocurate.settings import Settings

DEBUG_VARIABLE = "GEOCURATE_DEBUG"
USER_EXIT = 2  # a failure the user can fix (as for UserError)
BUG_EXIT = 1


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def _classes(module: str, *names: str) -> tuple[type, ...]:
    loaded = sys.modules.get(module)
    return tuple(getattr(loaded, name) for name in names if hasattr(loaded, name)) if loaded else ()


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _settings() -> "Settings | None":
    from geocurate.settings import get_settings

    try:
        return get_settings()
    except Exception:  # noqa: BLE001 - the settings themselves may be what failed
        return None


def _request_url(exc: BaseException) -> str | None:
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx raises when the error carries no request
        return None
    url = getattr(request, "url", None)
    return str(url) if url is not None else None


def _label_studio(exc: BaseException, settings: "Settings | None") -> str | None:
    if not isinstance(exc, _classes("httpx", "TransportError")
                      + _classes("requests.exceptions", "ConnectionError", "Timeout")):
        return None
    configured = settings.label_studio_url if settings else None
    url = _request_url(exc)
    if configured and (url is None or _same_server(url, configured)):
        return f"cannot reach Label Studio at {mask_url(configured)}: {_first_line(exc)}"
    return f"cannot reach {mask_url(url) if url else 'a server'}: {_first_line(exc)}"


def _same_server(url: str, configured: str) -> bool:
    import httpx

    try:
        a, b = httpx.URL(url), httpx.URL(configured)
    except Exception:  # noqa: BLE001 - an unparsable URL is not the configured one
        return False
    return (a.host, a.port) == (b.host, b.port)


def _store(exc: BaseException, settings: "Settings | None") -> str | None:
    if not isinstance(exc, _classes("sqlalchemy.exc", "OperationalError", "InterfaceError")):
        return None
    url = mask_url(settings.database_url) if settings else "the configured URL"
    reason = _first_line(getattr(exc, "orig", None) or exc)
    if getattr(exc, "statement", None) is None:  # raised while connecting, before any statement ran
        return f"cannot reach the store at {url}: {reason}"
    return f"the store at {url} failed: {reason}"


def _broker(exc: BaseException, settings: "Settings | None") -> str | None:
    kinds = (_classes("kombu.exceptions", "OperationalError")
             + _classes("redis.exceptions", "ConnectionError", "TimeoutError")
             + _classes("amqp.exceptions", "RecoverableConnectionError") + (ConnectionError,))
    if not isinstance(exc, kinds):
        return None
    if not settings or not settings.broker_url:
        return f"cannot connect: {_first_line(exc)}"
    where = f"the broker at {mask_url(settings.broker_url)}"
    if settings.result_backend and settings.result_backend != settings.broker_url:
        where += f" or the result backend at {mask_url(settings.result_backend)}"
    return f"cannot reach {where}: {_first_line(exc)}"


def _database_url_syntax(exc: BaseException, settings: "Settings | None") -> str | None:
    """SQLAlchemy's URL parser raises a bare ValueError (with a piece of the password in it) when a password holds
    an unencoded `@`, `:` or `/`; the message names the URL, masked, and the fix instead."""
    if not isinstance(exc, ValueError) or exc.__traceback__ is None:
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or not frames[-1].filename.replace("\\", "/").endswith("sqlalchemy/engine/url.py"):
        return None
    url = mask_url(settings.database_url) if settings else "GEOCURATE_DATABASE_URL"
    return (f"invalid database URL {url}: percent-encode special characters of the user name and password "
            "(@ as %40, : as %3A, / as %2F, % as %25)")


EXPLAINERS = (_label_studio, _store, _broker, _database_url_syntax)


def explain(exc: BaseException, settings: "Settings | None" = None) -> tuple[str, int]:
    """(one line, exit status) for an exception that ended a command; the line is scrubbed."""
    settings = settings or _settings()
    if isinstance(exc, (UserError, *_classes("db.engine", "StoreUnavailable"))):
        return scrub(str(exc), settings), USER_EXIT
    for cause in _chain(exc):
        for explainer in EXPLAINERS:
            line = explainer(cause, settings)
            if line:
                return scrub(line, settings), USER_EXIT
    hint = "" if debugging() else f" (set {DEBUG_VARIABLE}=1 for the traceback)"
    return scrub(f"unexpected {type(exc).__name__}: {_first_line(exc)}{hint}", settings), BUG_EXIT


def scrubbed_traceback(exc: BaseException) -> str:
    return scrub("".join(traceback.format_exception(exc)))


def report(exc: BaseException) -> int:
    """Print the exception's line (and, when debugging, its scrubbed traceback) to stderr; the exit status."""
    import typer

    line, status = explain(exc)
    if debugging():
        sys.stderr.write(scrubbed_traceback(exc))
    typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
    return status


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    line, _ = explain(args.exc_value)
    name = args.thread.name if args.thread else "a thread"
    if debugging():
        sys.stderr.write(scrubbed_traceback(args.exc_value))
    sys.stderr.write(f"error in {name}: {line}\n")


def install_thread_hook() -> None:
    """A background thread's failure is one scrubbed line too (Python prints its traceback otherwise)."""
    threading.excepthook = _thread_failed
