"""Benchmark: generate N raw events in a temporary data dir, run the ETL, print rows/s.

The events are encoded and keyed exactly as the ingest service archives them (the
domain's `encode` and `object_key_for`), written without fsync to keep generation fast,
and each gets its metadata row (object key, SHA-256 of its bytes) in the embedded
profile's SQLite repository, which the ETL verifies every event against. A small share
is deliberately torn after its row was recorded, so the checksum-mismatch rejection
path is measured too.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wotr_domain.archive import object_key_for
from wotr_domain.codec import encode, sha256_hex
from wotr_domain.ids import new_event_id
from wotr_domain.models import Event, EventMetadata
from wotr_domain.ports import MetadataRepo

__all__ = ["generate", "main"]


def generate(
    root: Path, repo: MetadataRepo, events: int, days: int, broken_every: int = 1000, seed: int = 7, chunk: int = 5000
) -> int:
    """Write `events` raw objects under `root` (a bucket directory) over `days` dates and
    record their metadata in `repo`; returns the count torn after recording."""
    rng = random.Random(seed)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    made: set[Path] = set()
    broken = 0
    rows: list[EventMetadata] = []
    for i in range(events):
        received = end - timedelta(days=i % days) + timedelta(seconds=rng.randrange(86_400), microseconds=rng.randrange(10**6))
        event = Event(
            id=new_event_id(),
            received_at=received,
            payload={"user": rng.randrange(10_000), "action": rng.choice(("view", "click", "buy")), "value": rng.random()},
            source="bench",
            type="interaction",
            timestamp=received - timedelta(seconds=rng.randrange(60)),
        )
        key = object_key_for(event.id, received)
        path = root / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        body = encode(event)
        rows.append(EventMetadata(id=event.id, object_key=key, size=len(body), checksum=sha256_hex(body),
                                  received_at=received, source=event.source, type=event.type))
        if len(rows) >= chunk:
            repo.record(rows)
            rows = []
        if broken_every and i % broken_every == broken_every - 1:
            body, broken = body[: len(body) // 2], broken + 1  # torn after recording: a checksum mismatch
        path.write_bytes(body)
    if rows:
        repo.record(rows)
    return broken


def _directory(location: str) -> Path:
    """The directory of a `file://` store location (the embedded profile's object store)."""
    if not location.startswith("file://"):
        raise ValueError(f"the benchmark writes raw objects as files, not to {location}")
    return Path(location.removeprefix("file://"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wotr_apps.etl.bench", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="raw events to generate (default %(default)s)")
    p.add_argument("--days", type=int, default=3, help="dates to spread them over (default %(default)s)")
    p.add_argument("--runs", type=int, default=2, help="ETL runs over the same data (default %(default)s)")
    args = p.parse_args(argv)
    if args.events < 1 or args.days < 1 or args.runs < 1:
        p.error("--events, --days and --runs must be positive")

    from dependency_injector import providers

    from ..container import build_container
    from ..settings import Settings

    def say(message: str) -> None:
        print(message, flush=True)

    with tempfile.TemporaryDirectory(prefix="wotr-etl-bench-") as tmp:
        container = build_container(Settings(profile="embedded", data_dir=Path(tmp)), role="etl")
        container.etl_say.override(providers.Object(say))
        try:
            store, repo = container.object_store(), container.metadata_repo()  # files and SQLite in the temp dir
            t0 = time.monotonic()
            broken = generate(_directory(store.location()), repo, args.events, args.days)
            say(f"generated {args.events:,} raw events and their metadata over {args.days} date(s) "
                f"({broken:,} torn) in {time.monotonic() - t0:.1f}s")
            job = container.etl_job()  # starts Spark, saying how long that took
            for n in range(1, args.runs + 1):
                run = job.run()
                rate = run.rows_read / run.duration_seconds
                say(f"run {n}: {run.rows_read:,} objects read, {run.rows_written:,} written, "
                    f"{run.rows_rejected:,} rejected, {run.orphans:,} orphans, {run.missing:,} missing "
                    f"in {run.duration_seconds:.1f}s -> {rate:,.0f} rows/s")
        finally:
            container.shutdown_resources()  # stops Spark and closes the repository
    return 0


if __name__ == "__main__":
    sys.exit(main())
