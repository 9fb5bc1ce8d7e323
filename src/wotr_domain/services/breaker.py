"""A circuit breaker: after a dependency failed, skip it for a while.

The ingest service publishes in the request path; when the bus is down every publish
would wait for its timeout. With the breaker an outage costs one timeout, then requests
skip the bus (the outbox relay publishes their events) until the pause has passed and
one request tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

__all__ = ["Breaker"]


class Breaker:
    def __init__(self, pause: float, clock: Callable[[], datetime]) -> None:
        self._pause = timedelta(seconds=pause)
        self._clock = clock
        self._until: datetime | None = None

    @property
    def open(self) -> bool:
        """True while calls should skip the dependency."""
        return self._until is not None and self._clock() < self._until

    def failed(self) -> None:
        self._until = self._clock() + self._pause

    def succeeded(self) -> None:
        self._until = None
