"""Is the broker there? Asked before a command submits work or a process starts serving, so that an unreachable
broker is one line naming it (password masked) instead of kombu's endless reconnect loop or a thread traceback."""

from __future__ import annotations

from geocurate.errors import UserError
from geocurate.settings import Settings

CONNECT_TIMEOUT = 5.0


class BrokerUnavailable(UserError):
    """The broker URL is malformed or the server cannot be reached."""


def check_broker(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect once, within `timeout` seconds; BrokerUnavailable otherwise. Embedded mode has no broker to check."""
    if settings.embedded:
        return
    from kombu import Connection

    from db.engine import masked

    url = settings.broker_url
    try:
        with Connection(url, connect_timeout=timeout, transport_options={"max_retries": 0}) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - kombu raises many kinds; every one means "no broker"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerUnavailable(f"cannot reach the broker at {masked(url)}: {reason}") from None
