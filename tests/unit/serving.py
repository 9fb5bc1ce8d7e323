"""`wotr serve`'s server (uvicorn with the hardened protocol) for a container's app, in a
thread on an ephemeral 127.0.0.1 port: what the tests that speak real HTTP share."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from wotr_apps.api.server import build_server


@contextmanager
def uvicorn_serving(container) -> Iterator[int]:
    """Serve `container.app()` until the block ends; yields the port."""
    server = build_server(container.app(), container.settings(), log_level="warning")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the API did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
