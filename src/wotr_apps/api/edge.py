"""Everything the ingest endpoints use, as one dependency.

Litestar resolves several dependencies of a handler concurrently in a task group, which
costs tens of microseconds per request; the ingest endpoints (the hot path) take this one
object instead, built once per application.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from wotr_domain.errors import Overloaded
from wotr_domain.services import GroupCommit, IngestService
from wotr_domain.services.group_commit import InFlightLimit

__all__ = ["ADMITTED", "Admission", "IngestEdge", "LoopLag", "admission_on", "refusal_body", "shed_early"]


@dataclass
class IngestEdge:
    resolve_ingest: Callable[[], IngestService]
    group_commit: GroupCommit
    limits: dict[str, int]
    batch_slots: InFlightLimit
    origins: Any  # segment.OriginPolicy: which browser origins the tracking endpoints serve
    _ingest: IngestService | None = field(default=None, repr=False)

    @property
    def ingest(self) -> IngestService:
        if self._ingest is None:
            self._ingest = self.resolve_ingest()
        return self._ingest


_SHED_PATHS = frozenset({"/ingest"})


class LoopLag:
    """How late the event loop runs what is due: a timer every `every` seconds notes by how
    much it fired late. When the loop is the bottleneck (every request costs CPU on it),
    requests wait in its ready queue and the socket's backlog where no queue of ours sees
    them; its lag is that wait. `lag` is the smallest of the last `window` samples: only a
    loop that is late at every turn counts as behind, never one pause (a GC, a slow
    machine for an instant)."""

    def __init__(self, every: float = 0.005, window: int = 4) -> None:
        from collections import deque

        self.every = every
        self.lag = 0.0
        self._samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="wotr-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.every
            await asyncio.sleep(self.every)
            self._samples.append(max(0.0, loop.time() - due))
            self.lag = min(self._samples) if len(self._samples) == self._samples.maxlen else 0.0


class Admission:
    """Whether a request is refused before it is read: `POST /ingest` while the writes are
    behind (`GroupCommit.overloaded`), the event loop runs later than the same bound
    (`LoopLag`), or `max_in_flight` admitted requests are still being served. Asked twice
    over: by the server's protocol as a request's headers complete (`admission_on`: the
    refusal then costs no ASGI request cycle at all) and by the `shed_early` middleware
    (servers without that protocol, pipelined requests).

    The in-flight bound sees what the group commit's sojourn does not: requests admitted
    whose body is still read, whose handler waits for the loop, or whose answer waits to be
    sent. On a saturated loop each of those waits grows with the number of requests
    admitted, so bounding them bounds an accepted request's latency (Little's law: at
    2,000 requests/s, 75 in flight is 37.5 ms)."""

    def __init__(self, group_commit: GroupCommit, lag: LoopLag, paths: frozenset[str] = _SHED_PATHS, *,
                 max_in_flight: int = 0) -> None:
        self.group_commit = group_commit
        self.lag = lag
        self.paths = paths
        self.raw_paths = frozenset(p.encode() for p in paths)
        self.max_in_flight = max_in_flight  # 0: no bound
        self.in_flight = 0  # admitted and not yet answered (the event loop's thread only: no lock)

    def admit(self) -> str | None:
        """None when one more request to a shed path is admitted now (it counts in flight
        until `done`); else why it is refused (counted as shed, see `GroupCommit.shed_reason`)."""
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return self.group_commit.shed(f"{self.max_in_flight} requests are being served already")
        reason = self.group_commit.shed_reason(late=self.lag.lag)
        if reason is None:
            self.in_flight += 1
        return reason

    def done(self) -> None:
        """An admitted request was answered (or its client left)."""
        self.in_flight -= 1

    @property
    def retry_after(self) -> float:
        return self.group_commit.retry_after

    async def start(self) -> None:
        """Watch the loop's lag and answer for this loop's server from now on."""
        await self.lag.start()
        _ON_LOOP[asyncio.get_running_loop()] = self

    async def stop(self) -> None:
        _ON_LOOP.pop(asyncio.get_running_loop(), None)
        await self.lag.stop()


# One application serves per event loop: a server's protocol finds its admission by loop.
_ON_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Admission] = weakref.WeakKeyDictionary()


def admission_on(loop: asyncio.AbstractEventLoop) -> Admission | None:
    """The admission of the application serving on `loop`, once its lifespan started."""
    return _ON_LOOP.get(loop)


def refusal_body(refused: Overloaded) -> tuple[bytes, bytes]:
    """The 503's JSON body and its Retry-After value: one shape wherever it is answered."""
    body = msgspec.json.encode({"status_code": 503, "error": "overloaded", "detail": str(refused)})
    return body, str(max(1, round(refused.retry_after))).encode()


# Set in an ASGI scope by the server's protocol when it admitted the request itself, to the
# time it did (`time.monotonic`, the group commit's clock): the middleware and the group
# commit then do not ask again (a request admitted is served, not refused after its body
# was read because the state changed in between), and the request's sojourn counts from
# its headers, so the time it waits for the event loop before it is submitted counts too.
ADMITTED = "wotr.admitted"


def shed_early(admission: Admission) -> Any:
    """ASGI middleware: a `POST /ingest` the admission refuses is answered 503 before
    routing, its body drained unread, so a refusal costs the loop microseconds instead of a
    full request's work and the client's connection stays usable. An admitted request (here
    or by the server's protocol) leaves the admission's in-flight count once answered."""

    def middleware(app: Any) -> Any:
        async def shed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if ADMITTED not in scope:  # else the server's protocol admitted it (and counted it in flight)
                if scope["method"] != "POST" or scope["path"] not in admission.paths:
                    await app(scope, receive, send)
                    return
                reason = admission.admit()
                if reason is not None:
                    more = True
                    while more:  # drain what the client sends (bounded by the server's own limits)
                        message = await receive()
                        more = message.get("more_body", False) and message["type"] == "http.request"
                    body, retry = refusal_body(Overloaded("api", reason, retry_after=admission.retry_after))
                    await send({"type": "http.response.start", "status": 503, "headers": [
                        (b"content-type", b"application/json"), (b"retry-after", retry),
                        (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            try:
                await app(scope, receive, send)
            finally:
                admission.done()

        return shed

    return middleware
