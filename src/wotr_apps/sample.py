"""`wotr ingest`: send sample events to a running API and print what it answered."""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime

__all__ = ["sample_event", "send_samples"]

_PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]


def sample_event(n: int) -> dict:
    return {
        "source": "wotr-sample",
        "type": random.choice(["page_view", "click", "signup"]),
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"seq": n, "page": random.choice(_PAGES), "user": f"user-{random.randint(1, 500)}"},
    }


def send_samples(url: str, count: int, batch: int = 0) -> int:
    import httpx

    started = time.perf_counter()
    accepted = rejected = 0
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
            if batch > 0:
                for start in range(0, count, batch):
                    events = [sample_event(n) for n in range(start, min(count, start + batch))]
                    r = client.post("/ingest/batch", json=events)
                    body = r.json()
                    accepted += body.get("accepted", 0)
                    rejected += body.get("rejected", len(events) if r.status_code >= 400 else 0)
            else:
                for n in range(count):
                    r = client.post("/ingest", json=sample_event(n))
                    if r.status_code in (200, 202):
                        accepted += 1
                        if count <= 20:
                            print(f"{r.status_code} {r.json()['id']} {r.json()['object_key']}")
                    else:
                        rejected += 1
                        print(f"{r.status_code} {r.text}", file=sys.stderr)
    except httpx.HTTPError as e:
        print(f"wotr ingest: cannot reach {url}: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(f"sent {count} event(s): {accepted} accepted, {rejected} rejected in {elapsed:.2f}s")
    return 0 if rejected == 0 else 1
