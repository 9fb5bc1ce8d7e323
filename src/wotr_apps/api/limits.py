"""Rate limits of the ingest endpoints: a token bucket per write key (per client address
when keys are off), answered 429 with Retry-After and the RateLimit headers.

The algorithm is GCRA (the "generic cell rate algorithm", a token bucket kept as one
number per client: the bucket's theoretical arrival time, TAT). A request at `now` moves
the TAT to `max(TAT, now) + 1/rate` if that stays within `burst / rate` of now, else it
is refused. One number per client and one comparison per request, and on PostgreSQL one
atomic upsert (`wotr_adapters.postgres_keys.PostgresRateLimiter`), so several API
processes share each client's bucket exactly.

Where the buckets live is the container's choice by profile: in this process
(`LocalBuckets`) on `memory` and `embedded` (one API process), in PostgreSQL on `local`
(where several API processes may serve behind a balancer).

Headers (the `RateLimit-*` fields of the IETF httpapi draft, as Litestar's own rate
limit middleware and most APIs send them, plus Retry-After on a 429):

- `RateLimit-Limit`: the burst, requests a client may send at once;
- `RateLimit-Remaining`: requests it may still send right now;
- `RateLimit-Reset`: seconds until its bucket is full again;
- `Retry-After` (429 only): seconds until its next request passes.

Every answer of a rate-limited endpoint carries the three `RateLimit-*` headers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .errors import RateLimited

__all__ = ["Buckets", "Decision", "LocalBuckets", "RateLimiter", "rate_limit", "rate_limit_headers"]

# Rounding slack: a burst of n requests at one instant must pass although n intervals,
# each rounded (to microseconds on PostgreSQL), may add up to a hair over n / rate.
_SLACK = 1e-5
_SCOPE_KEY = "wotr.rate_limit"
WRITE_KEY_SCOPE = "wotr.write_key"  # where `auth.require_write_key` leaves the key it accepted


class Buckets(Protocol):
    """Where token buckets live: `take` one token from `bucket` (`interval` = 1 / rate,
    at most `burst` tokens); `(allowed, ahead)`, `ahead` the seconds the bucket's TAT is
    ahead of now afterwards (allowed) or as it stands (refused)."""

    def take(self, bucket: str, interval: float, burst: int) -> tuple[bool, float]: ...


class LocalBuckets:
    """Token buckets in this process's memory: for the profiles with one API process.

    At most `max_buckets` are kept: past that, the full ones (TAT passed, the same as no
    entry) are dropped; if none is full, all are (a client is forgiven, never blocked).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max = max_buckets
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self) -> None: ...

    def close(self) -> None: ...

    def check(self) -> None: ...

    def take(self, bucket: str, interval: float, burst: int) -> tuple[bool, float]:
        with self._lock:
            now = self._clock()
            tat = self._tat.get(bucket, now)
            if tat < now:
                tat = now
            new = tat + interval
            if new - now > interval * burst + _SLACK:
                return False, tat - now
            self._tat[bucket] = new
            if len(self._tat) > self._max:
                self._tat = {k: v for k, v in self._tat.items() if v > now}
                if len(self._tat) > self._max:
                    self._tat = {bucket: new}
            return True, new - now


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                   "RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """`per_second` requests per second per client, `burst` at once (0: the rate rounded up,
    at least 1), on `buckets`. `blocking` buckets (PostgreSQL) are asked on a worker thread."""

    def __init__(self, buckets: Buckets | Callable[[], Buckets], per_second: float, burst: int = 0, *,
                 blocking: bool = False) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        # The buckets, or a function giving them (a container provider: resolving it starts them).
        self._buckets_of: Callable[[], Buckets] = (lambda: buckets) if hasattr(buckets, "take") else buckets  # type: ignore[assignment]
        self._buckets: Buckets | None = None
        self.per_second = per_second
        self.burst = burst or max(1, math.ceil(per_second))
        self.interval = 1.0 / per_second
        self.blocking = blocking

    async def start(self) -> None:
        """Resolve (and so start) the buckets' store, off the event loop."""
        self._buckets = await anyio.to_thread.run_sync(self._buckets_of)

    def buckets(self) -> Buckets:
        if self._buckets is None:
            self._buckets = self._buckets_of()
        return self._buckets

    async def take(self, bucket: str) -> Decision:
        buckets = self.buckets()
        if self.blocking:
            allowed, ahead = await anyio.to_thread.run_sync(buckets.take, bucket, self.interval, self.burst)
        else:
            allowed, ahead = buckets.take(bucket, self.interval, self.burst)
        return self.decide(allowed, ahead)

    def decide(self, allowed: bool, ahead: float) -> Decision:
        interval, burst = self.interval, self.burst
        room = interval * burst + _SLACK - ahead  # seconds of tokens left in the bucket
        remaining = max(0, min(burst, math.floor(room / interval))) if allowed else 0
        wait = ahead + interval - interval * burst  # until one token is back
        return Decision(
            allowed=allowed, limit=burst, remaining=remaining, reset=max(0, math.ceil(ahead - _SLACK)),
            retry_after=max(1, math.ceil(wait - _SLACK)),
        )


def _client_bucket(connection: ASGIConnection) -> str:
    key = connection.scope.get(WRITE_KEY_SCOPE)
    if key is not None:
        return f"key:{key.id}"
    client = connection.client
    return f"addr:{client.host if client else 'unknown'}"


async def rate_limit(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: take a token from the client's bucket (the write key's, after `require_write_key`;
    else the client address's); 429 `rate_limited` when it is empty. Nothing when limits are off."""
    limiter: RateLimiter | None = connection.app.state.get("rate_limiter")
    if limiter is None:
        return
    decision = await limiter.take(_client_bucket(connection))
    if not decision.allowed:
        raise RateLimited(
            f"rate limit of {limiter.per_second:g} requests per second (burst {limiter.burst}) exceeded: "
            f"retry in {decision.retry_after} s",
            decision.headers(),
        )
    connection.scope[_SCOPE_KEY] = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]  # type: ignore[literal-required]


def rate_limit_headers(app: ASGIApp) -> ASGIApp:
    """Middleware: the RateLimit headers of a request that passed `rate_limit`, on its answer
    (whatever its status: a 202 as well as a 422)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: Any = scope.get(_SCOPE_KEY)
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware
