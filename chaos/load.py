"""Open-loop load with client ids and SDK-style retries.

Single events (`POST /ingest`) and batches (`POST /ingest/batch`) are sent at fixed rates:
request i is due at t0 + i/rate whether or not earlier ones were answered. Every event has
a client id; a request is retried with the same body (same ids, same content) on a
timeout, a 5xx, or a connection that failed or was reset, as an SDK does, with
exponential backoff (Retry-After honoured, capped) until the retry deadline. 4xx answers
are final. Bounded: `rate x duration` requests, retries until `retry_until` seconds after
the last one was due, at most `connections` connections at once.

Per event id the ledger keeps what the client was told:

- accepted: a 202 or 200 answer (single), or an item without error in a 202/207 answer
  (batch): the platform promised to keep it;
- refused: the last answer was a 4xx (or an item error), or no answer came before the
  deadline (5xx, reset, timeout): it may be absent, or present exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

ACCEPTED, REFUSED, PENDING = "accepted", "refused", "pending"
PAD = "x" * 64


@dataclass
class Attempt:
    started: float  # time.monotonic()
    ended: float
    kind: str  # "202", "503", ... or connect | no_answer | timeout
    first_id: str = ""  # the (first) event id of the request
    error: str = ""  # the client's exception, when no answer came


@dataclass
class Ledger:
    state: dict[str, str] = field(default_factory=dict)  # id -> accepted | refused | pending
    reason: dict[str, str] = field(default_factory=dict)  # id -> why it was refused
    conflicts: list[str] = field(default_factory=list)  # 409 on a retry with the same content: a bug
    attempts: list[Attempt] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # per attempt: status code or error kind
    errors: Counter = field(default_factory=Counter)  # per non-2xx answer: "503 unavailable: <detail>"
    requests: int = 0
    retries: int = 0

    def ids(self, state: str) -> set[str]:
        return {i for i, s in self.state.items() if s == state}

    def accept(self, event_id: str) -> None:
        self.state[event_id] = ACCEPTED
        self.reason.pop(event_id, None)

    def refuse(self, event_id: str, why: str) -> None:
        if self.state.get(event_id) != ACCEPTED:
            self.state[event_id] = REFUSED
            self.reason[event_id] = why


def _kind(exc: Exception) -> str:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "connect"  # never reached the server
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        return "timeout"
    return "no_answer"  # sent (at least in part), then reset or closed before any answer


class Load:
    """Run with `start()`; `join()` waits until every request got its final answer."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        duration: float,
        single_rate: float,
        batch_rate: float,
        batch_size: int,
        retry_until: float = 60.0,
        attempt_timeout: float = 10.0,
        connections: int = 48,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.duration = duration
        self.single_rate = single_rate
        self.batch_rate = batch_rate
        self.batch_size = batch_size
        self.retry_until = retry_until
        self.attempt_timeout = attempt_timeout
        self.connections = connections
        self.ledger = Ledger()
        self.t0 = 0.0
        self.sent_all = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._last_failure: dict[bytes, str] = {}  # body -> why its last attempt failed
        self.in_flight = {"s": 0, "b": 0}  # requests sent and not yet answered, single / batch
        self._bursts = 0
        self._done = 0
        self._tasks: list = []

    # -- control -----------------------------------------------------------------------

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the load generator did not finish")
        if self.error is not None:
            raise RuntimeError(f"the load generator failed: {self.error!r}") from self.error

    def burst(self, n: int) -> None:
        """Send `n` more single events at once (ids `<prefix>x<k>`), from another thread."""

        def add() -> None:
            for _ in range(n):
                self._bursts += 1
                self._tasks.append(asyncio.ensure_future(self._single(self._client, self._bursts, "x")))

        self._loop.call_soon_threadsafe(add)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by join()
            self.error = e

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
        timeout = httpx.Timeout(self.attempt_timeout, pool=None)  # waiting for a connection is not a failure
        self._deadline = self.t0 + self.duration + self.retry_until
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=timeout) as client:
            tasks: list[asyncio.Task] = []
            self._loop, self._client, self._tasks = asyncio.get_running_loop(), client, tasks
            schedule = []
            if self.single_rate > 0:
                schedule += [(i / self.single_rate, "s", i) for i in range(int(self.single_rate * self.duration))]
            if self.batch_rate > 0:
                schedule += [(0.5 / self.batch_rate + i / self.batch_rate, "b", i)
                             for i in range(int(self.batch_rate * self.duration))]
            schedule.sort()
            for due, what, n in schedule:
                delay = self.t0 + due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if what == "s":
                    tasks.append(asyncio.create_task(self._single(client, n)))
                else:
                    tasks.append(asyncio.create_task(self._batch(client, n)))
            self.sent_all.set()
            while tasks:  # a burst may add tasks meanwhile
                pending, tasks[:] = list(tasks), []
                await asyncio.gather(*pending)
                self._done += len(pending)

    def _event(self, event_id: str, kind: str, n: int) -> dict:
        return {"id": event_id, "source": "chaos", "type": kind,
                "payload": {"prefix": self.prefix, "n": n, "pad": PAD}}

    async def _single(self, client: httpx.AsyncClient, n: int, tag: str = "s") -> None:
        event_id = f"{self.prefix}{tag}{n}"
        body = json.dumps(self._event(event_id, "single", n)).encode()
        self.ledger.state[event_id] = PENDING
        response = await self._send(client, "/ingest", body, event_id)
        if response is None:
            self.ledger.refuse(event_id, self._last_failure.get(body, "no answer before the deadline"))
        elif response.status_code in (200, 202):
            self.ledger.accept(event_id)
        else:
            if response.status_code == 409:
                self.ledger.conflicts.append(event_id)
            self.ledger.refuse(event_id, f"{response.status_code} {response.text[:120]}")

    async def _batch(self, client: httpx.AsyncClient, n: int) -> None:
        ids = [f"{self.prefix}b{n}.{i}" for i in range(self.batch_size)]
        body = json.dumps([self._event(event_id, "batch", n) for event_id in ids]).encode()
        for event_id in ids:
            self.ledger.state[event_id] = PENDING
        response = await self._send(client, "/ingest/batch", body, ids[0])
        if response is None:
            why = self._last_failure.get(body, "no answer before the deadline")
            for event_id in ids:
                self.ledger.refuse(event_id, why)
            return
        if response.status_code in (202, 207, 422):
            results = response.json().get("results", [])
            for item in results:
                event_id = ids[item["index"]]
                if item.get("error") is None:
                    self.ledger.accept(event_id)
                else:
                    if item.get("code") == "conflict":
                        self.ledger.conflicts.append(event_id)
                    self.ledger.refuse(event_id, f"item {item.get('code')}: {item.get('error')}"[:160])
            answered = {item["index"] for item in results}
            for i, event_id in enumerate(ids):
                if i not in answered:
                    self.ledger.refuse(event_id, f"{response.status_code} without a result for the item")
        else:
            for event_id in ids:
                self.ledger.refuse(event_id, f"{response.status_code} {response.text[:120]}")

    async def _send(self, client: httpx.AsyncClient, path: str, body: bytes, first_id: str) -> httpx.Response | None:
        """POST until a final answer (2xx or 4xx) or the deadline; None when none came."""
        self.ledger.requests += 1
        backoff = 0.2
        attempt = 0
        headers = {"content-type": "application/json"}
        while True:
            attempt += 1
            if attempt > 1:
                self.ledger.retries += 1
            started = time.monotonic()
            retry_after = None
            which = "b" if path.endswith("batch") else "s"
            self.in_flight[which] += 1
            error = ""
            try:
                response = await client.post(path, content=body, headers=headers)
                kind = str(response.status_code)
            except httpx.TransportError as exc:
                response = None
                kind = _kind(exc)
                error = f"{type(exc).__name__}: {exc}"[:120]
            finally:
                self.in_flight[which] -= 1
            ended = time.monotonic()
            self.ledger.attempts.append(Attempt(started, ended, kind, first_id, error))
            self.ledger.statuses[kind] += 1
            if response is not None and response.status_code >= 400:
                try:
                    err = response.json()
                    text = f"{err.get('error')}: {err.get('detail')}"
                except ValueError:
                    text = response.text
                text = re.sub(r"raw/dt=\S+", "<object>", str(text))
                self.ledger.errors[f"{response.status_code} {text}"[:160]] += 1
            if response is not None and response.status_code < 500:
                self._last_failure.pop(body, None)
                return response
            if response is not None:
                self._last_failure[body] = f"{response.status_code} {response.text[:100]}"
                try:
                    retry_after = float(response.headers.get("retry-after", ""))
                except ValueError:
                    retry_after = None
            else:
                self._last_failure[body] = kind
            wait = min(retry_after if retry_after is not None else backoff, 3.0) * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, 3.0)
            if time.monotonic() + wait > self._deadline:
                return None
            await asyncio.sleep(wait)
