"""`wotr ingest`: send sample events to a running API, concurrently, with progress.

Single events go to `POST /ingest`, batches (`--batch N`) to `POST /ingest/batch`;
`--concurrency` requests are in flight at once. A progress line (events sent, rate) is
redrawn on a terminal; the summary counts accepted, duplicate and rejected events and
the failures by status. Exit 0 when every event was accepted, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["Tally", "sample_event", "send_samples"]

_PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]


def sample_event(n: int) -> dict:
    return {
        "source": "wotr-sample",
        "type": random.choice(["page_view", "click", "signup"]),
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"seq": n, "page": random.choice(_PAGES), "user": f"user-{random.randint(1, 500)}"},
    }


@dataclass
class Tally:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failures: Counter = field(default_factory=Counter)  # status (or error) -> requests

    def line(self, elapsed: float) -> str:
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        return (f"{self.sent:,} sent, {self.accepted:,} accepted, {self.duplicates:,} duplicate, "
                f"{self.rejected:,} rejected in {elapsed:.2f}s ({rate:,.0f} events/s)")


async def _send(client, count: int, batch: int, concurrency: int, tally: Tally, progress) -> None:
    chunks = [(start, min(count, start + max(batch, 1))) for start in range(0, count, max(batch, 1))]
    todo = iter(chunks)

    async def worker() -> None:
        for start, end in todo:
            events = [sample_event(n) for n in range(start, end)]
            try:
                if batch > 0:
                    r = await client.post("/ingest/batch", json=events)
                else:
                    r = await client.post("/ingest", json=events[0])
            except Exception as e:  # noqa: BLE001 - a refused connection or a timeout: counted, not fatal
                tally.sent += len(events)
                tally.rejected += len(events)
                tally.failures[type(e).__name__] += 1
                progress()
                continue
            tally.sent += len(events)
            if batch > 0 and r.status_code in (202, 207, 422) and r.headers.get("content-type", "").startswith("application/json"):
                body = r.json()
                results = body.get("results", [])
                tally.accepted += sum(1 for x in results if "error" not in x and not x.get("duplicate"))
                tally.duplicates += sum(1 for x in results if x.get("duplicate"))
                tally.rejected += sum(1 for x in results if "error" in x)
                if r.status_code != 202:
                    tally.failures[r.status_code] += 1
            elif r.status_code in (200, 202):
                if r.status_code == 200:
                    tally.duplicates += len(events)
                else:
                    tally.accepted += len(events)
            else:
                tally.rejected += len(events)
                tally.failures[r.status_code] += 1
            progress()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


def send_samples(url: str, count: int, batch: int = 0, concurrency: int = 8, *, write_key: str | None = None,
                 out=sys.stdout, err=sys.stderr) -> int:
    import httpx

    tally = Tally()
    started = time.perf_counter()
    live = err.isatty()
    last = [0.0]

    def progress() -> None:
        now = time.perf_counter()
        if live and now - last[0] > 0.1:
            last[0] = now
            err.write("\r" + tally.line(now - started))
            err.flush()

    async def run() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"X-Write-Key": write_key} if write_key else None
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=30, limits=limits, headers=headers) as client:
            await _send(client, count, batch, concurrency, tally, progress)

    asyncio.run(run())
    if live:
        err.write("\n")
    print(tally.line(time.perf_counter() - started), file=out)
    if tally.failures:
        print("failures: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.failures.items(), key=str)), file=err)
    if tally.sent and tally.failures and all(isinstance(k, str) for k in tally.failures) and tally.accepted == 0:
        print(f"wotr ingest: cannot reach {url}", file=err)
    return 0 if tally.rejected == 0 else 1
