"""The ingest policy "group commit": concurrent single-event requests share one archive
write, one metadata write and one publish.

Any driving adapter that serves concurrent callers on an asyncio loop (the HTTP API, an
embedding service) submits single events here instead of calling the ingest service
for each. Each request waits for a free flush slot; while every slot is busy, the requests that
arrive meanwhile queue up and go out together in the next flush. A lone request is
flushed at once (no timer), so batching costs nothing at low load and multiplies
throughput at high load. Every request still gets its own answer: its receipt, or the
error that refused it alone, or `Unavailable` when the whole flush failed.

What it changes in the archive: events flushed together share one NDJSON object
(`raw/dt=D/batch-<uuid7>.ndjson`, each on its own line); an event flushed alone gets its
own object (`wotr_domain.archive`). The receipt and the metadata row name the object and
the line either way.

Backpressure, after CoDel: the age of the oldest request not yet answered (waiting for a
flush slot, or in a flush) is its sojourn. A request is refused while the sojourn has
stayed above `max_wait` for `standing` seconds (a standing queue: more arrives than the
writes take, not one slow write), and at once on any sojourn above `max_wait` within a
second of the last refusal (the overload goes on); or when `max_queued` events wait
already. So a slow write now and then costs nobody a refusal, and under overload the
accepted requests wait about `max_wait`, not seconds. A flush takes at most `max_events`
events, so that its own duration, which grows with its size, stays a small part of an
accepted event's wait. Then `submit` raises `Overloaded` at once:
the caller answers "retry later" (the API: 503 with Retry-After) instead of making the
client wait behind seconds of queued work, and the shed request is reported to the
observer. `InFlightLimit` is the same bound for work that is not queued here (the API's
batches): a slot is taken without waiting, or refused with `Overloaded`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ..errors import Overloaded, Unavailable
from ..models import IngestRequest, Receipt
from .observer import IngestObserver, NullObserver

__all__ = ["DEFAULT_FLUSHES", "DEFAULT_MAX_QUEUED", "GroupCommit", "InFlightLimit", "Written"]

log = logging.getLogger(__name__)

# What a flush's write returns: the answers, or the answers and a step to run after them.
Written = list[Any] | tuple[list[Any], Callable[[], None]]

DEFAULT_MAX_QUEUED = 2000  # events waiting for a flush slot
DEFAULT_MAX_WAIT = 0.04  # seconds of sojourn the writes may run behind (the target)
DEFAULT_STANDING = 0.05  # seconds the sojourn must stay above the target before a first refusal
STRICT_FOR = 1.0  # seconds after a refusal during which any sojourn above the target refuses
DEFAULT_MAX_EVENTS = 200  # events in one flush
DEFAULT_FLUSHES = 2  # flushes written at once (WOTR_INGEST_FLUSHES)
SHED_RETRY_AFTER = 1.0  # seconds a shed client is told to wait


class InFlightLimit:
    """At most `limit` units of work at once; one more is refused at once with `Overloaded`.

    For driving adapters that run work outside the group commit (the API's batches): no
    queue, no wait, so a refused client hears it in microseconds. Thread-safe.
    """

    def __init__(self, limit: int, *, what: str = "requests", observer: IngestObserver | None = None,
                 retry_after: float = SHED_RETRY_AFTER) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.what = what
        self.retry_after = retry_after
        self._observer = observer or NullObserver()
        self._lock = threading.Lock()
        self.in_flight = 0

    @contextmanager
    def admit(self, events: int = 1) -> Iterator[None]:
        """Hold a slot for the block; `Overloaded` (and `events` reported shed) when none is free."""
        with self._lock:
            full = self.in_flight >= self.limit
            if not full:
                self.in_flight += 1
        if full:
            self._observer.shed(events)
            raise Overloaded("api", f"{self.limit} {self.what} in flight already", retry_after=self.retry_after)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1


class GroupCommit:
    def __init__(
        self,
        write: Callable[[Sequence[IngestRequest]], Written],
        *,
        flushes: int = DEFAULT_FLUSHES,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_wait: float = DEFAULT_MAX_WAIT,
        standing: float = DEFAULT_STANDING,
        observer: IngestObserver | None = None,
        retry_after: float = SHED_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`write` is `IngestService.accept_many` or `ingest_many` (blocking; run on this
        policy's own threads, one per flush slot, so it never competes with the caller's
        thread pool): the answers, or the answers and a step to run once they are given
        (the publish), on threads of its own (`_follow`). `flushes` writes run at once: fewer
        spend less CPU per event (the requests that arrive during the writes go out together
        in the next), more overlap the caller's own work with the writes and hide the latency
        of a distant store. `max_queued` bounds the events
        waiting for a slot (at least 1)."""
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self._write = write
        self._flushes = flushes
        self._max_events = max_events
        self.max_queued = max_queued
        self.max_wait = max_wait
        self.standing = standing
        self._above_since: float | None = None  # since when the sojourn is above max_wait
        self._refused_at = -STRICT_FOR  # when a request was last refused
        self._clock = clock
        # When each unanswered request arrived, oldest first (answered ones leave from the left).
        self._unanswered: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._observer = observer or NullObserver()
        self._retry_after = retry_after
        self._queue: asyncio.Queue[tuple[IngestRequest, asyncio.Future[Any]]] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._publisher: ThreadPoolExecutor | None = None
        self._steps: deque[Callable[[], None]] = deque()  # steps after flushes (publishes) not yet taken
        self._followers = 0  # tasks running those steps, at most one per publishing thread

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(self._flushes, thread_name_prefix="wotr-flush")
        self._publisher = ThreadPoolExecutor(self._flushes, thread_name_prefix="wotr-publish")
        self._queue = asyncio.Queue(self.max_queued)
        self._slots = asyncio.Semaphore(self._flushes)
        self._collector = asyncio.create_task(self._collect(), name="wotr-group-commit")

    async def stop(self) -> None:
        """Finish the flushes in progress; refuse what is still queued or collected.

        Every request gets an answer: its receipt when its flush ran, else 503 (nothing
        of it was written, so the client's retry is safe).
        """
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        while self._running:  # flushes, then the publishes they leave behind
            await asyncio.gather(*list(self._running), return_exceptions=True)
        self._refuse([])
        self._queue = None
        for pool in (self._executor, self._publisher):
            if pool is not None:
                pool.shutdown(wait=False)
        self._executor = self._publisher = None

    def _refuse(self, batch: list[tuple[IngestRequest, asyncio.Future[Any]]]) -> None:
        """Answer 503 to `batch` and to everything still queued."""
        while self._queue is not None and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        for _, future in batch:
            if not future.done():
                future.set_result(Unavailable("api", "shutting down"))
        self._unanswered.clear()

    async def submit(self, request: IngestRequest, *, admitted_at: float | None = None) -> Receipt:
        """The request's receipt once its flush is durable. Refused at once (`Overloaded`)
        while `overloaded`, unless the caller admitted it already by the same rule at
        `admitted_at` (this policy's clock: the API's protocol, as the request's headers came
        in; its sojourn counts from then, and a request read after that is served), and
        whenever `max_queued` events wait already."""
        if self._queue is None:
            raise Unavailable("api", "not started or shutting down")
        refused = None if admitted_at is not None else self.refuse_if_overloaded()
        if refused is not None:  # shed at once: never make a client wait behind the bound
            raise refused
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((request, future))
        except asyncio.QueueFull:
            self._observer.shed(1)
            raise Overloaded(
                "api", f"{self.max_queued} events are waiting to be written already", retry_after=self._retry_after
            ) from None
        self._unanswered.append((self._clock() if admitted_at is None else admitted_at, future))
        answer = await future
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def refuse_if_overloaded(self, late: float = 0.0) -> Overloaded | None:
        """The refusal of one more request while `overloaded`, or while the caller itself is
        `late` by more than `max_wait` seconds (e.g. its event loop's lag), counted as shed;
        else None: what a driving adapter calls to refuse before it even reads the request."""
        reason = self.shed_reason(late)
        return None if reason is None else Overloaded("api", reason, retry_after=self._retry_after)

    def shed_reason(self, late: float = 0.0) -> str | None:
        """`refuse_if_overloaded` without the exception: why one more request is refused now
        (counted as shed), or None. For a caller that answers thousands of refusals a
        second and needs only the words (the API's protocol)."""
        if late > self.max_wait:
            reason = "the server is behind: requests wait longer than %.0f ms"
        elif self.overloaded:
            reason = "the writes are behind: events wait longer than %.0f ms"
        else:
            return None
        return self.shed(reason % (self.max_wait * 1000))

    def shed(self, reason: str) -> str:
        """Count one request refused for `reason` (by this policy, or by a bound of the
        caller's own) and return the reason: the overload goes on, so for a while any sojourn
        above the target refuses (see `overloaded`)."""
        self._refused_at = self._clock()
        self._observer.shed(1)
        return reason

    @property
    def retry_after(self) -> float:
        """Seconds a refused client is told to wait."""
        return self._retry_after

    @property
    def overloaded(self) -> bool:
        """True while new requests are to be refused (see the module: the sojourn above
        `max_wait` for `standing` seconds, or at all shortly after a refusal): a driving
        adapter may refuse new work before even reading it."""
        unanswered = self._unanswered
        while unanswered and unanswered[0][1].done():
            unanswered.popleft()
        now = self._clock()
        if not unanswered or now - unanswered[0][0] <= self.max_wait:
            self._above_since = None
            return False
        if self._above_since is None:
            self._above_since = now
        return now - self._above_since >= self.standing or now - self._refused_at < STRICT_FOR

    @property
    def queued(self) -> int:
        """Events waiting for a flush slot now."""
        return 0 if self._queue is None else self._queue.qsize()

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            batch = [await self._queue.get()]
            try:
                await self._slots.acquire()  # while every slot is busy, the queue fills up
            except asyncio.CancelledError:  # stopping: what was taken is answered, not dropped
                self._refuse(batch)
                raise
            while len(batch) < self._max_events and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._flush(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _flush(self, batch: list[tuple[IngestRequest, asyncio.Future[Any]]]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        after: Callable[[], None] | None = None
        try:
            try:
                written = await loop.run_in_executor(self._executor, self._write, [r for r, _ in batch])
                answers, after = written if isinstance(written, tuple) else (written, None)
            except Exception as e:  # a WotrError, or answered as a 500 by the framework: never left hanging
                answers = [e] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        finally:
            self._slots.release()
        if after is not None:
            self._follow(after)

    def _follow(self, after: Callable[[], None]) -> None:
        """Run a flush's follow-up step (its publish) on the publishing threads, off the
        flush slots: a slow or unreachable bus never holds up what is accepted. Steps that
        wait meanwhile are merged (`step + step`, when they support it: one publish and one
        mark for several flushes), so the bus keeps up with any number of small flushes."""
        self._steps.append(after)
        if self._followers < self._flushes and self._publisher is not None:
            self._followers += 1
            task = asyncio.create_task(self._follower())
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _follower(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._steps:
                steps = list(self._steps)
                self._steps.clear()
                try:
                    merged = [functools.reduce(operator.add, steps)]
                except TypeError:  # steps that do not merge run one after the other
                    merged = steps
                for step in merged:
                    try:
                        await loop.run_in_executor(self._publisher, step)
                    except Exception:  # the events stay `stored`: the outbox relay publishes them
                        log.exception("the step after a flush failed; its events are left to the outbox relay")
        finally:
            self._followers -= 1
