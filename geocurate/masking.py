"""Secrets never reach a user: URL passwords are masked where a URL is shown, and every message, exception and log
record that leaves the process is scrubbed of the secret values the settings hold.

Masking a URL is not enough on its own: drivers and clients quote passwords back in their errors (sometimes
percent-encoded, sometimes decoded, sometimes cut in two by a parser that stopped at an unencoded `@` or `:`), and
exceptions carry them into tracebacks and logs. So `scrub` knows the secrets themselves, in every spelling.
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, get_args
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from geocurate.settings import Settings

MASK = "***"
MIN_SECRET = 3  # shorter values would garble every message and are no secret anyway
MIN_FRAGMENT = 4  # pieces of a password a parser cut at `@`, `:`, `/`, `?` or `#`

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SCHEME_TYPO = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:/*")  # `postgresql:/u:pw@h`: a whole setting, never free text
_HOST = re.compile(r"[A-Za-z0-9.\-_~%!$&'()*+,;=\[\]:]*")  # host[:port], IPv6 literals, several hosts
_AUTHORITY_END = re.compile(r"[/?#]")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_FRAGMENT_CUT = re.compile(r"[@:/?#]")


def _password_span(segment: str) -> tuple[int, int] | None:
    """(start, end) of the password in one `scheme://...` segment, or None. The userinfo ends at an `@` followed
    by something that looks like a host; the last such `@` wins, so a password may contain unencoded `@`. An `@`
    whose userinfo holds `/`, `?` or `#` is taken only when no other fits (an e-mail in the query, a path)."""
    head = _SCHEME.match(segment) or _SCHEME_TYPO.match(segment)
    if head is None:
        return None
    start = head.end()
    rest = segment[start:]
    fitting, preferred = None, None
    for at in (i for i, c in enumerate(rest) if c == "@"):
        after = rest[at + 1:]
        end = _AUTHORITY_END.search(after)
        if not _HOST.fullmatch(after[: end.start()] if end else after):
            continue
        fitting = at
        if not _AUTHORITY_END.search(rest[:at]):
            preferred = at
    at = preferred if preferred is not None else fitting
    if at is None or ":" not in rest[:at]:
        return None
    colon = rest.index(":")
    if colon + 1 == at:
        return None  # empty password
    return start + colon + 1, start + at


def _segments(text: str) -> list[tuple[int, int]]:
    """Each `scheme://` starts a URL of its own (kombu's `url1;url2` failover lists, a URL inside a query); a
    setting with a mistyped `scheme:/` is still one URL."""
    starts = [m.start() for m in _SCHEME.finditer(text)] or ([0] if _SCHEME_TYPO.match(text) else [])
    return list(zip(starts, starts[1:] + [len(text)]))


def url_passwords(url: str) -> list[str]:
    """The password of every URL in `url`, as written there (percent-encoded or not)."""
    found = []
    for begin, end in _segments(url):
        span = _password_span(url[begin:end])
        if span:
            found.append(url[begin + span[0] : begin + span[1]])
    return found


def mask_url(url: str) -> str:
    """The URL with each password replaced by `***`; user, host, port and path stay readable."""
    parts, last = [], 0
    for begin, end in _segments(url):
        span = _password_span(url[begin:end])
        if span:
            parts += [url[last : begin + span[0]], MASK]
            last = begin + span[1]
    return "".join(parts) + url[last:]


def _spelled_any_way(secret: str) -> str:
    """A pattern matching the secret with any of its characters percent-encoded (either hex case) or not."""
    pieces = []
    for char in secret:
        if char.isascii() and char.isalnum():
            pieces.append(re.escape(char))
            continue
        options = {re.escape(char), re.escape(quote(char, safe="")), re.escape(quote(char, safe="").lower())}
        if char == " ":
            options.add(r"\+")
        pieces.append("(?:" + "|".join(sorted(options, key=len, reverse=True)) + ")")
    return "".join(pieces)


def _secret_strings(values: list[tuple[str, bool]]) -> tuple[str, ...]:
    """Every spelling worth hiding: each secret raw and decoded, and the long pieces of URL passwords."""
    found: set[str] = set()
    for value, is_url_password in values:
        for form in {value, unquote(value)}:
            if len(form) >= MIN_SECRET:
                found.add(form)
            if is_url_password:
                found.update(p for p in _FRAGMENT_CUT.split(form) if len(p) >= MIN_FRAGMENT)
    return tuple(sorted(found, key=len, reverse=True))


@lru_cache(maxsize=8)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    return re.compile("|".join(_spelled_any_way(s) for s in secrets))


def _from_settings(settings: "Settings") -> list[tuple[str, bool]]:
    from pydantic import SecretStr

    values: list[tuple[str, bool]] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append((value.get_secret_value(), False))
        elif isinstance(value, str):
            values += [(password, True) for password in url_passwords(value)]
    return values


def _from_environment() -> list[tuple[str, bool]]:
    """When the settings cannot be built (a bad value elsewhere), the secrets still come from the environment."""
    from pydantic import SecretStr

    from geocurate.settings import ENV_PREFIX, Settings

    values: list[tuple[str, bool]] = []
    for name, field in Settings.model_fields.items():
        raw = os.environ.get(f"{ENV_PREFIX}{name.upper()}")
        if not raw:
            continue
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation):
            values.append((raw, False))
        else:
            values += [(password, True) for password in url_passwords(raw)]
    return values


def secret_pattern(settings: "Settings | None" = None) -> re.Pattern[str] | None:
    if settings is None:
        from geocurate.settings import get_settings

        try:
            settings = get_settings()
        except Exception:  # noqa: BLE001 - an invalid setting must not stop the error from being shown
            return _pattern(_secret_strings(_from_environment()))
    if _LAST[0] is not settings:  # one settings object serves a whole process: read its secrets once
        _LAST[:] = [settings, _pattern(_secret_strings(_from_settings(settings)))]
    return _LAST[1]


_LAST: list = [None, None]


def scrub(text: str, settings: "Settings | None" = None) -> str:
    """`text` with every secret of the settings (default: the current ones) and every URL password replaced."""
    pattern = secret_pattern(settings)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def _scrubbed_argument(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    clean = scrub(text)
    return value if clean == text else clean


class ScrubFilter(logging.Filter):
    """Scrubs a record's message, arguments, traceback and stack before any handler formats it. On a handler it
    sees every record that reaches the handler, including those propagated from child loggers. The arguments keep
    their shape, since some formatters read them (uvicorn's access log unpacks them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = scrub(record.msg) if isinstance(record.msg, str) else _scrubbed_argument(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_scrubbed_argument(a) for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: _scrubbed_argument(v) for k, v in record.args.items()}
            message = record.getMessage()
            if scrub(message) != message:  # a secret put together from the message and its arguments
                record.msg, record.args = scrub(message), None
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem to report, not ours
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def scrub_logs(*loggers: logging.Logger) -> None:
    """Put a ScrubFilter on every handler of these loggers (the root logger when none are given)."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())
