"""Open-loop HTTP load at a fixed rate: request i is due at t0 + i/rate whether or not
earlier ones have been answered, and its latency is measured from when it was due (so a
slow server cannot hide queueing: no coordinated omission).

HTTP/1.1 keep-alive on uvloop, a connection pool that grows up to `--connections`; a
request that finds every connection busy waits for one, and that wait counts in its
latency. Accepted answers (200/202) and refusals (503, the API shedding load) are timed
apart; `--method GET` sends no body, `--header` adds one. Bounded: `rate * duration`
requests, then at most `--timeout` seconds for the last answers. Runs as its own process
so that its CPU use is measured on its own.

Built to cost little per request, so that in an overload run (several times what the
server takes, on the same cores) the generator neither starves the server nor adds its
own scheduling delays to what it measures: one small `asyncio.Protocol` per connection
parses the responses (status line, Content-Length, body) and completes its request in
place, with no task, future or timeout object per request; one periodic sweep times out
requests older than `--timeout`; requests are sent when due off a periodic CLOCK_MONOTONIC
timerfd (the event loop's own timers tick in whole milliseconds, and shorter sleeps spin).
About 55 µs of CPU a request (0.3 core) at 5,400 requests/s against a trivial server,
most of it in the kernel; streams, a task and a timeout per request took 130-190 µs and
a sleep loop that spun.

    python -m bench.openloop --url http://127.0.0.1:8000/ingest --rate 1000 --duration 15 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Callable
from urllib.parse import urlsplit

_PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]
_BODY = '{"source":"bench","type":"page_view","timestamp":"%s","payload":{"seq":%d,"page":"%s","user":"user-%d"}}'
_SWEEP_S = 0.01  # how often requests past --timeout are looked for


def event_body(seq: int, timestamp: str | None = None) -> bytes:
    """One sample event (~180 bytes): the shape `wotr ingest` sends."""
    ts = timestamp if timestamp is not None else datetime.now(UTC).isoformat()
    return (_BODY % (ts, seq, _PAGES[seq % 5], seq % 500)).encode()


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 90, 95, 99, 99.9)) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    out = {f"p{q:g}": v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))] for q in qs}
    out["max"] = v[-1]
    out["mean"] = sum(v) / len(v)
    return out


class _Metronome:
    """Calls `callback` from the event loop at `start`, `start + period`, ... (times of
    `time.perf_counter()`), to the microsecond and without a system call to re-arm: a
    periodic CLOCK_MONOTONIC timerfd watched by the loop, its ticks never before the
    exact times. uvloop's timers round to whole milliseconds (a sleep under 0.5 ms is "at
    once": a sender waiting for a request due in 185 µs spins a core) and re-arming a
    one-shot timer per request costs a system call each. Where there is no timerfd,
    `next(when)` falls back on the loop's timer, at least a millisecond at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop, self._callback, self._fd, self._handle = loop, callback, -1, None
        self._step, self._armed = 1, 0.0
        try:
            import ctypes

            if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
                raise OSError("perf_counter is not CLOCK_MONOTONIC")
            libc = ctypes.CDLL(None, use_errno=True)
            self._settime = libc.timerfd_settime
            fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC; TFD_NONBLOCK | TFD_CLOEXEC
            if fd < 0:
                raise OSError(ctypes.get_errno(), "timerfd_create")
            self._spec = (ctypes.c_long * 4)()  # struct itimerspec: it_interval, it_value (tv_sec, tv_nsec each)
            self._fd = fd
        except (OSError, AttributeError):
            self._fd = -1

    def start(self, start: float, period: float) -> None:
        if self._fd < 0:
            self.next(start)
            return
        self._step = max(1, math.ceil(period * 1e9))  # ns, rounded up: late by < 1 ns a period, never early
        self._arm(start)
        self._loop.add_reader(self._fd, self._fired)

    def _arm(self, when: float) -> None:
        import ctypes

        first = math.ceil(when * 1e9) + 1000  # ns; 1 µs late rather than a float rounding early
        spec, step = self._spec, self._step
        spec[0], spec[1], spec[2], spec[3] = step // 10**9, step % 10**9, first // 10**9, first % 10**9
        if self._settime(self._fd, 1, ctypes.byref(spec), None) != 0:  # TFD_TIMER_ABSTIME
            raise OSError(ctypes.get_errno(), "timerfd_settime")
        self._armed = when

    def next(self, when: float) -> None:
        """The next call is due at `when`: without the timerfd, set the loop's timer; with it,
        re-arm it there every 50 ms so that the rounded-up period does not drift late."""
        if self._fd < 0:
            self._handle = self._loop.call_later(max(0.001, when - time.perf_counter()), self._callback)
        elif when - self._armed > 0.05:
            self._arm(when)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        self._callback()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


async def run(url: str, rate: float, duration: float, max_conns: int, timeout: float, method: str = "POST",
              headers: list[str] | None = None) -> dict:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    wall = time.time
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("open-loop load goes to 127.0.0.1 only")
    addr = ("127.0.0.1", port)  # "localhost" too, not resolved per connection; the Host header keeps the name
    n = int(rate * duration)
    due = [0.0] * n
    latency = [math.nan] * n  # from due time to the end of the response
    service = [math.nan] * n  # from writing the request to the end of the response
    status = [0] * n
    finished = bytearray(n)  # 1 once answered, failed or timed out
    owner: list[_Conn | None] = [None] * n  # the connection a request is on (or is opening)
    extra_headers = "".join(f"{h.strip()}\r\n" for h in (headers or []))
    ids: list[tuple[str, float, float]] = []  # (event id, wall-clock time of the 202, seconds since it was due)
    errors: dict[str, int] = {}
    idle: list[_Conn] = []  # LIFO; may hold connections the server closed since (skipped)
    waiting: deque[int] = deque()  # requests that found every connection busy, oldest first
    if method == "GET":
        get_request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra_headers}\r\n".encode()
    else:
        get_request = b""
        prefix = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                  f"{extra_headers}Content-Length: ").encode()
    pages = _PAGES
    stamp, stamp_until = "", 0.0  # the body's timestamp, refreshed once a millisecond
    opened = live = issued = done_count = oldest = 0
    sending = True
    all_done = loop.create_future()

    class _Conn(asyncio.Protocol):
        """One keep-alive connection: at most one request in flight, its response parsed here."""

        __slots__ = ("transport", "req", "sent", "buf", "need", "code", "start", "close_after", "dead", "task")

        def __init__(self, req: int) -> None:
            self.transport: asyncio.Transport | None = None
            self.req = req  # the request in flight (or waiting for this connection to open), else -1
            self.sent = 0.0
            self.buf = b""
            self.need = 0  # bytes of the whole response, once its head is parsed
            self.code = self.start = 0  # its status, where its body starts
            self.close_after = False  # it says `Connection: close`
            self.dead = False
            self.task: asyncio.Task | None = None

        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            i = self.req
            if i < 0:
                return  # nothing asked: not a response to anything
            buf = self.buf + data if self.buf else data
            need = self.need
            if need:
                if len(buf) < need:
                    self.buf = buf
                    return
            else:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    self.buf = buf
                    return
                head = buf[:head_end].lower()
                at = head.find(b"\r\ncontent-length:")
                try:
                    self.code = int(buf[9:12])
                    if at >= 0:
                        eol = head.find(b"\r\n", at + 17)
                        length = int(head[at + 17: eol if eol >= 0 else head_end])
                    else:
                        length = 0
                except ValueError:
                    self.buf, self.need = b"", 0
                    self.req = -1
                    drop(self)
                    fail(i, "ValueError")
                    return
                self.start = head_end + 4
                self.close_after = b"\r\nconnection: close" in head
                need = self.need = self.start + length
                if len(buf) < need:
                    self.buf = buf
                    return
            end = clock()
            body = buf[self.start:need]
            self.buf, self.need = b"", 0
            self.req = -1
            code = self.code
            status[i] = code
            latency[i] = lat = end - due[i]
            service[i] = end - self.sent
            if code == 202 or code == 200:
                at = body.find(b'"id":"')
                if at >= 0:
                    ids.append((body[at + 6: body.index(b'"', at + 6)].decode(), wall(), lat))
            else:
                key = str(code)
                errors[key] = errors.get(key, 0) + 1
            if self.close_after:
                drop(self)
            else:
                release(self)
            finish(i)

        def eof_received(self) -> None:
            return None  # close: connection_lost follows

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal live
            if self.dead:
                return  # closed here, already accounted for
            self.dead = True
            live -= 1
            i = self.req
            self.req = -1
            if i >= 0 and not finished[i]:
                fail(i, "IncompleteReadError" if exc is None else type(exc).__name__)
            wake_waiter()

    def send(conn: _Conn, i: int) -> None:
        nonlocal stamp, stamp_until
        conn.req = i
        owner[i] = conn
        if get_request:
            request = get_request
        else:
            now = clock()
            if now >= stamp_until:
                stamp, stamp_until = datetime.now(UTC).isoformat(), now + 0.001
            body = (_BODY % (stamp, i, pages[i % 5], i % 500)).encode()
            request = b"%s%d\r\n\r\n%s" % (prefix, len(body), body)
        conn.sent = clock()
        conn.transport.write(request)

    def issue(i: int) -> None:
        while idle:
            conn = idle.pop()
            if not conn.dead:
                send(conn, i)
                return
        if live < max_conns:
            open_for(i)
        else:
            waiting.append(i)

    def open_for(i: int) -> None:
        nonlocal live, opened
        live += 1
        opened += 1
        conn = _Conn(i)
        owner[i] = conn
        conn.task = loop.create_task(connect(conn))

    async def connect(conn: _Conn) -> None:
        nonlocal live
        try:
            await loop.create_connection(lambda: conn, *addr)
        except OSError as e:
            if not conn.dead:
                conn.dead = True
                live -= 1
                i, conn.req = conn.req, -1
                if i >= 0 and not finished[i]:
                    fail(i, type(e).__name__)
                wake_waiter()
            return
        conn.task = None
        if conn.dead:  # its request timed out meanwhile, or the server closed it at once
            if conn.transport is not None:
                conn.transport.close()
            return
        i = conn.req
        if i >= 0 and not finished[i]:
            send(conn, i)
        else:
            conn.req = -1
            release(conn)

    def release(conn: _Conn) -> None:
        while waiting:
            i = waiting.popleft()
            if not finished[i]:
                send(conn, i)
                return
        idle.append(conn)

    def drop(conn: _Conn) -> None:
        """Close a connection this side gave up on (timeout, bad response, `Connection: close`)."""
        nonlocal live
        if conn.dead:
            return
        conn.dead = True
        live -= 1
        if conn.transport is not None:
            conn.transport.close()
        elif conn.task is not None:
            conn.task.cancel()
        wake_waiter()

    def wake_waiter() -> None:
        """A connection went away: the oldest waiting request opens a fresh one."""
        while waiting and live < max_conns:
            i = waiting.popleft()
            if not finished[i]:
                open_for(i)
                return

    def fail(i: int, kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1
        finish(i)

    def finish(i: int) -> None:
        nonlocal done_count
        finished[i] = 1
        done_count += 1
        if not sending and done_count >= issued and not all_done.done():
            all_done.set_result(None)

    def sweep() -> None:
        """Time out requests due more than `timeout` ago (waiting, connecting or in flight)."""
        nonlocal oldest
        limit = clock() - timeout
        gone = []
        while oldest < issued:
            i = oldest
            if finished[i]:
                oldest += 1
                continue
            if due[i] > limit:
                break
            conn = owner[i]
            if conn is not None and conn.req == i:
                conn.req = -1
                gone.append(conn)
            fail(i, "timeout")
            oldest += 1
        for conn in gone:  # once all are marked: a freed slot goes to a request not yet timed out
            drop(conn)
        if not all_done.done():
            loop.call_later(_SWEEP_S, sweep)

    def tick() -> None:
        """Send every request now due (called when the next one is due, or later)."""
        nonlocal issued, sending, sent_until
        now = clock()
        upto = min(n, math.floor((now - t0) * rate) + 1)
        i = issued
        while i < upto:
            due[i] = t0 + i / rate
            issued = i + 1
            issue(i)
            i += 1
        if i < n:
            metronome.next(t0 + i / rate)
        else:
            metronome.close()
            sent_until = clock()
            sending = False
            if done_count >= issued and not all_done.done():
                all_done.set_result(None)

    metronome = _Metronome(loop, tick)
    t0 = clock() + 0.1
    sent_until = t0
    if n:
        metronome.start(t0, 1 / rate)
        loop.call_later(_SWEEP_S, sweep)
        await all_done
    else:
        sending = False
    ended = clock()
    metronome.close()
    for conn in idle:
        if not conn.dead:
            conn.dead = True
            conn.transport.close()
    ok = [latency[k] * 1000 for k in range(n) if status[k] in (200, 202)]
    svc = [service[k] * 1000 for k in range(n) if status[k] in (200, 202)]
    refused = [latency[k] * 1000 for k in range(n) if status[k] == 503]
    first_refused = next((due[k] - t0 for k in range(n) if status[k] == 503), None)
    counts: dict[str, int] = {}
    for code in status:
        if code:
            counts[str(code)] = counts.get(str(code), 0) + 1
    return {
        "offered_rate": rate,
        "duration_s": duration,
        "requests": n,
        "ok": len(ok),
        "errors": errors,
        "sending_s": sent_until - t0,
        "achieved_rate": len(ok) / max(ended - t0, 1e-9),
        "connections_opened": opened,
        "latency_ms": percentiles(ok),
        "service_ms": percentiles(svc),
        "refused": len(refused),
        "refused_ms": percentiles(refused),
        "first_refused_s": first_refused,
        "status_counts": counts,
        "method": method,
        "max_connections": max_conns,
        "ids": ids,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--method", default="POST", choices=("POST", "GET"))
    p.add_argument("--header", action="append", default=[], help="an extra request header, 'Name: value'")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.connections + 64 > soft and hard > soft:  # an overload run holds thousands of connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else args.connections + 1024,
                                                    hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.url, args.rate, args.duration, args.connections, args.timeout, args.method, args.header))
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "ids"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
