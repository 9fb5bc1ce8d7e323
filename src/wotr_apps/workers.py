"""Long-running loops around the services: the analytics consumer and the outbox relay.

Both stop promptly when their stop event is set. The consumer never drops a batch it
polled: when the sink is down it retries the same batch with backoff, and if stopped
meanwhile it leaves the batch uncommitted, so the bus delivers it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from wotr_domain.errors import Unavailable
from wotr_domain.services import AnalyticsLoader, OutboxRelay

__all__ = ["Backoff", "run_consumer", "run_relay", "WorkerThread"]

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff from `start` to `cap` seconds, reset on success."""

    def __init__(self, start: float = 0.2, cap: float = 10.0) -> None:
        self.start, self.cap, self.delay = start, cap, start

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.start


def run_consumer(
    loader: AnalyticsLoader,
    stop: threading.Event,
    *,
    batch_size: int,
    batch_seconds: float,
    on_lag: Callable[[dict[int, int]], None] | None = None,
    lag_every: float = 5.0,
) -> None:
    backoff = Backoff()
    next_lag = 0.0
    while not stop.is_set():
        if on_lag is not None and time.monotonic() >= next_lag:
            next_lag = time.monotonic() + lag_every
            try:
                on_lag(loader.lag())
            except Unavailable as e:
                log.debug("consumer: lag unknown: %s", e)
        try:
            batch = loader.poll(batch_size, batch_seconds)
        except Unavailable as e:
            log.warning("consumer: bus unavailable, retrying: %s", e)
            stop.wait(backoff.next())
            continue
        while batch and not stop.is_set():
            try:
                loader.handle(batch)
                backoff.reset()
                break
            except Unavailable as e:
                log.warning("consumer: batch of %d not loaded, retrying: %s", len(batch), e)
                stop.wait(backoff.next())
    loader.close()


def run_relay(relay: OutboxRelay, stop: threading.Event, *, interval: float, batch_size: int = 1000) -> None:
    backoff = Backoff(start=interval, cap=max(interval, 30.0))
    while not stop.is_set():
        try:
            published = relay.run_once(batch_size)
            backoff.reset()
        except Unavailable as e:
            log.warning("relay: %s", e)
            stop.wait(backoff.next())
            continue
        if published == 0:
            stop.wait(interval)


class WorkerThread:
    """A daemon thread running `target(stop)` with a stop event and a bounded join."""

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self.stop_event = threading.Event()
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target(self.stop_event)
        except Exception:
            log.exception("worker %s crashed", self._thread.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)
