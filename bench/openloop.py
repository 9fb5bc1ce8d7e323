"""Open-loop HTTP load at a fixed rate: request i is due at t0 + i/rate whether or not
earlier ones have been answered, and its latency is measured from when it was due (so a
slow server cannot hide queueing: no coordinated omission).

Raw asyncio streams on uvloop, HTTP/1.1 keep-alive, a connection pool that grows up to
`--connections`; a request that finds every connection busy waits for one, and that
wait counts in its latency. Accepted answers (200/202) and refusals (503, the API
shedding load) are timed apart; `--method GET` sends no body, `--header` adds one. Bounded: `rate * duration` requests, then at most
`--timeout` seconds for the last answers. Runs as its own process so that its CPU use
is measured on its own.

    python -m bench.openloop --url http://127.0.0.1:8000/ingest --rate 1000 --duration 15 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import deque
from datetime import UTC, datetime
from urllib.parse import urlsplit

_PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]


def event_body(seq: int) -> bytes:
    """One sample event (~180 bytes): the shape `wotr ingest` sends."""
    return (
        '{"source":"bench","type":"page_view","timestamp":"%s","payload":{"seq":%d,"page":"%s","user":"user-%d"}}'
        % (datetime.now(UTC).isoformat(), seq, _PAGES[seq % 5], seq % 500)
    ).encode()


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 90, 95, 99, 99.9)) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    out = {f"p{q:g}": v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))] for q in qs}
    out["max"] = v[-1]
    out["mean"] = sum(v) / len(v)
    return out


async def run(url: str, rate: float, duration: float, max_conns: int, timeout: float, method: str = "POST",
              headers: list[str] | None = None) -> dict:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("open-loop load goes to 127.0.0.1 only")
    n = int(rate * duration)
    due = [0.0] * n
    latency = [math.nan] * n  # from due time to the end of the response
    service = [math.nan] * n  # from writing the request to the end of the response
    status = [0] * n
    extra_headers = "".join(f"{h.strip()}\r\n" for h in (headers or []))
    ids: list[tuple[str, float, float]] = []  # (event id, wall-clock time of the 202, seconds since it was due)
    errors: dict[str, int] = {}
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    waiters: deque[asyncio.Future] = deque()
    opened = 0
    live = 0

    async def acquire():
        nonlocal opened, live
        if idle:
            return idle.pop()
        if live < max_conns:
            live += 1
            opened += 1
            try:
                return await asyncio.open_connection(host, port)
            except OSError:
                live -= 1
                raise
        fut = loop.create_future()
        waiters.append(fut)
        return await fut

    def release(conn) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        idle.append(conn)

    def drop(conn) -> None:
        nonlocal live
        live -= 1
        conn[1].close()
        if waiters and live < max_conns:  # let a waiter open a fresh connection
            fut = waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection dropped; retry"))

    async def exchange(conn, request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        code = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        body = await reader.readexactly(length) if length else b""
        return code, body

    async def one(i: int) -> None:
        conn = None
        try:
            async with asyncio.timeout(timeout):
                while conn is None:
                    try:
                        conn = await acquire()
                    except ConnectionResetError:
                        conn = None
                if method == "GET":
                    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra_headers}\r\n".encode()
                else:
                    payload = event_body(i)
                    request = (
                        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                        f"{extra_headers}Content-Length: {len(payload)}\r\n\r\n"
                    ).encode() + payload
                sent = clock()
                code, body = await exchange(conn, request)
            end = clock()
            release(conn)
            status[i] = code
            latency[i] = end - due[i]
            service[i] = end - sent
            if code in (200, 202):
                at = body.find(b'"id":"')
                if at >= 0:
                    ids.append((body[at + 6: body.index(b'"', at + 6)].decode(), time.time(), latency[i]))
            else:
                errors[str(code)] = errors.get(str(code), 0) + 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            if conn is not None:
                drop(conn)
            kind = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
            errors[kind] = errors.get(kind, 0) + 1

    tasks = []
    t0 = clock() + 0.1
    i = 0
    while i < n:
        now = clock()
        upto = min(n, int((now - t0) * rate) + 1)
        while i < upto:
            due[i] = t0 + i / rate
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - clock()))
    sent_until = clock()
    await asyncio.gather(*tasks)
    ended = clock()
    for conn in idle:
        conn[1].close()
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
