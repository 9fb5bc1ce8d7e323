"""Small helpers shared by the chaos harness."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_T0 = time.monotonic()


def say(message: str) -> None:
    sys.stderr.write(f"[chaos {time.monotonic() - _T0:7.1f}s] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
