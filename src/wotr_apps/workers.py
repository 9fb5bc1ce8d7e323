"""Long-running loops around the services: the analytics consumer and the outbox relay.

Both stop promptly when their stop event is set. The consumer never drops a batch it
polled: when the sink is down it retries the same batch with backoff, and if stopped
meanwhile it leaves the batch uncommitted, so the bus delivers it again. The relay never
leaves a claim behind when it stops: a batch that failed has given its lease back already,
and one still in hand when the loop ends (or when the thread does not end in time) is
released (`OutboxRelay.release_claim`), so another relay can take its rows at once.

A loop that raises anything else (a bug, not an outage) ends its `WorkerThread`, which
records the error and calls its `on_crash` hook: the process entry points stop and exit
non-zero, and readiness reports the dead worker, instead of a process that looks
healthy while nothing runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from wotr_domain.errors import Unavailable
from wotr_domain.services import AnalyticsLoader, OutboxRelay

__all__ = ["Backoff", "WorkerThread", "consumer_worker", "describe", "relay_worker", "run_consumer", "run_relay"]

log = logging.getLogger(__name__)


def describe(error: BaseException) -> str:
    """`Type: message`, short enough for a log line or a readiness answer."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


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
    """Poll, load, commit until `stop` is set. An outage (`Unavailable`) is waited out with
    backoff, the same batch retried; anything else propagates and ends the worker.

    Polling runs one batch ahead on a thread of its own, so the bus fetches and decodes the
    next batch while the sink inserts this one; batches are still handled (and committed)
    one at a time, in order. A batch polled but not handled when `stop` is set is left
    uncommitted: the bus delivers it again.
    """
    backoff = Backoff()
    next_lag = 0.0
    ahead = _PollAhead(loader, stop, batch_size, batch_seconds)
    try:
        ahead.start()
        while not stop.is_set():
            if on_lag is not None and time.monotonic() >= next_lag:
                next_lag = time.monotonic() + lag_every
                try:
                    on_lag(loader.lag())
                except Unavailable as e:
                    log.debug("consumer: lag unknown: %s", e)
            batch = ahead.next(timeout=max(batch_seconds, 0.05))
            while batch and not stop.is_set():
                try:
                    loader.handle(batch, wait=stop.wait)
                    backoff.reset()
                    break
                except Unavailable as e:
                    log.warning("consumer: batch of %d not loaded, retrying: %s", len(batch), e)
                    stop.wait(backoff.next())
    finally:
        stop.set()
        ahead.join()
        loader.close()


class _PollAhead:
    """Polls on its own thread, at most one batch ahead of the loader.

    A bus outage is waited out here with backoff; any other error is handed to the
    consumer loop (`next` raises it), so a bug still ends the worker.
    """

    def __init__(self, loader: AnalyticsLoader, stop: threading.Event, batch_size: int, batch_seconds: float) -> None:
        self._loader = loader
        self._stop = stop
        self._batch_size = batch_size
        self._batch_seconds = batch_seconds
        self._ready: queue.Queue[list | BaseException] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="wotr-consumer-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(30)

    def next(self, timeout: float) -> list:
        """The next polled batch ([] when none came within `timeout`)."""
        try:
            item = self._ready.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, BaseException):
            raise item
        return item

    def _put(self, item: list | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            polled_at = time.monotonic()
            try:
                # A short wait per poll: the loader's commit takes turns with it on the driver.
                batch = self._loader.poll(self._batch_size, min(self._batch_seconds, 0.05))
            except Unavailable as e:
                log.warning("consumer: bus unavailable, retrying: %s", e)
                self._stop.wait(backoff.next())
                continue
            except Exception as e:  # a bug: the consumer loop raises it and the worker ends
                log.error("consumer: polling failed: %s", describe(e))
                self._put(e)
                return
            backoff.reset()
            if batch and not self._put(batch):
                return
            if batch and len(batch) < self._batch_size:
                # A small batch: the next one gathers for the batch time before it is taken.
                # Each batch costs an insert (a part of the table, merged later): at 1,000
                # events/s, batches of a few events cost the consumer most of a core.
                self._stop.wait(max(0.0, polled_at + self._batch_seconds - time.monotonic()))


def run_relay(relay: OutboxRelay, stop: threading.Event, *, interval: float, batch_size: int = 1000) -> None:
    """Publish overdue batches until `stop` is set; a batch in hand is finished first. An
    outage (`Unavailable`: the relay has released the batch's lease) is waited out with
    backoff; anything else propagates and ends the worker. Whatever ends the loop, the
    claim of a batch still in hand is released."""
    backoff = Backoff(start=interval, cap=max(interval, 30.0))
    try:
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
    finally:
        relay.release_claim()


class WorkerThread:
    """A daemon thread running `target(stop)` with a stop event and a bounded join.

    When the target raises, or returns although nobody asked it to stop, the worker has
    crashed: `error` keeps what ended it, `check()` raises `Unavailable` naming it (for
    readiness), and `on_crash(worker)` is called from the dying thread (the process entry
    points use it to shut the process down with a non-zero exit).

    When `stop()` gives up waiting for the thread, `on_abandon()` (if given) is called, on
    a helper thread waited for at most `ABANDON_TIMEOUT` seconds, to give back what the
    loop holds (the relay: its claim) before the process goes on without it.
    """

    ABANDON_TIMEOUT = 5.0

    def __init__(
        self,
        name: str,
        target: Callable[[threading.Event], None],
        *,
        on_crash: Callable[[WorkerThread], None] | None = None,
        on_abandon: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.stop_event = threading.Event()
        self.on_crash = on_crash
        self.on_abandon = on_abandon
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target(self.stop_event)
        except BaseException as e:  # noqa: BLE001 - whatever ends the loop is recorded
            self._crashed(e)
            return
        if not self.stop_event.is_set():
            self._crashed(RuntimeError("the loop returned without being asked to stop"))

    def _crashed(self, error: BaseException) -> None:
        self.error = error
        log.critical("worker %s crashed: %s", self.name, describe(error), exc_info=error)
        if self.on_crash is not None:
            try:
                self.on_crash(self)
            except Exception:
                log.exception("worker %s: crash handler failed", self.name)

    @property
    def crashed(self) -> bool:
        return self.error is not None

    def check(self) -> None:
        """Raise `Unavailable` naming the worker and its error once it has crashed."""
        if self.error is not None:
            raise Unavailable(f"worker {self.name}", f"crashed: {describe(self.error)}")

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return
        log.warning("worker %s did not stop within %gs; going on without it", self.name, timeout)
        if self.on_abandon is not None:
            helper = threading.Thread(target=self._abandon, name=f"{self.name}-abandon", daemon=True)
            helper.start()
            helper.join(self.ABANDON_TIMEOUT)

    def _abandon(self) -> None:
        try:
            self.on_abandon()
        except Exception:
            log.exception("worker %s: giving back what it holds failed", self.name)


def consumer_worker(loader: AnalyticsLoader, settings: Any, on_lag: Callable[[dict[int, int]], None] | None) -> WorkerThread:
    """The consumer thread; its subscription and sink are built (and fail) before it starts."""
    return WorkerThread(
        "wotr-consumer",
        lambda stop: run_consumer(
            loader, stop, batch_size=settings.consumer_batch_size, batch_seconds=settings.consumer_batch_seconds,
            on_lag=on_lag,
        ),
    )


def relay_worker(relay: OutboxRelay, settings: Any) -> WorkerThread:
    """The relay thread; a stop that cannot wait for its batch releases the batch's claim."""
    return WorkerThread(
        "wotr-relay",
        lambda stop: run_relay(relay, stop, interval=settings.relay_interval_seconds),
        on_abandon=relay.release_claim,
    )
