"""An ASGI app served by a real uvicorn on a free local port, in a thread of the test process: requests travel
over real sockets (chunked bodies, Content-Length, closed connections) while the test can still change settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.labelstudio_server import free_port


@contextmanager
def serving(app, port: int | None = None) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT) once the server accepts connections; stops it afterwards."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"uvicorn did not start on port {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
