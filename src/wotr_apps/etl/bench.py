"""Benchmark: generate N raw events in a temporary data dir, run the ETL, print rows/s.

The events are encoded and keyed exactly as the ingest service archives them (the
domain's `encode`, `object_key_for` and `batch_key_for`): one object per event, or
NDJSON objects of N events as a batch or a group-commit flush is written
(`--per-object N`); written without fsync to keep generation fast, and each event gets
its metadata row (object key, line, SHA-256 of its bytes) in the embedded profile's
SQLite repository, which the ETL verifies every event against. A small share
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

from wotr_domain.archive import raw_object
from wotr_domain.codec import encode, sha256_hex
from wotr_domain.ids import new_event_id
from wotr_domain.models import Event, EventMetadata
from wotr_domain.ports import MetadataRepo

__all__ = ["generate", "main"]


def generate(
    root: Path,
    repo: MetadataRepo,
    events: int,
    days: int,
    broken_every: int = 1000,
    seed: int = 7,
    chunk: int = 5000,
    per_object: int = 1,
) -> int:
    """Write `events` raw events under `root` (a bucket directory) over `days` dates and
    record their metadata in `repo`; returns the count torn after recording.

    `per_object` is the archive's layout: 1 writes each event as its own object
    (`raw/dt=D/<id>.json`, as a single ingested event is archived); N > 1 writes events N
    at a time as one NDJSON object (`raw/dt=D/batch-<uuid7>.ndjson`), as the ingest
    service archives the events of a batch or of one group-commit flush: one reception
    time per object, one event per line numbered from 0, each line the event's encoded
    bytes and its metadata row the checksum of exactly those bytes and its `line` (a last
    group of one event is a single object, as the service writes it). Every
    `broken_every`-th event is torn after its row was recorded (its object, or its line,
    cut to half its bytes): a checksum mismatch, in either layout.
    """
    if per_object < 1:
        raise ValueError("per_object must be at least 1")
    rng = random.Random(seed)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    made: set[Path] = set()
    broken = 0
    rows: list[EventMetadata] = []
    choice, randrange, rand = rng.choice, rng.randrange, rng.random
    for group, first in enumerate(range(0, events, per_object)):
        count = min(per_object, events - first)
        # One reception time per object, as the service gives the events it writes together.
        received = end - timedelta(days=group % days) + timedelta(seconds=randrange(86_400),
                                                                  microseconds=randrange(10**6))
        bodies: list[bytes] = []
        ids: list[str] = []
        for _ in range(count):
            event = Event(
                id=new_event_id(),
                received_at=received,
                payload={"user": randrange(10_000), "action": choice(("view", "click", "buy")), "value": rand()},
                source="bench",
                type="interaction",
                timestamp=received - timedelta(seconds=randrange(60)),
            )
            ids.append(event.id)
            bodies.append(encode(event))
        sizes = [len(body) for body in bodies]
        sums = [sha256_hex(body) for body in bodies]  # of the events' bytes, before any is torn
        for k in range(count):
            if broken_every and (first + k) % broken_every == broken_every - 1:
                bodies[k], broken = bodies[k][: len(bodies[k]) // 2], broken + 1  # torn: no longer the bytes its row names
        obj = raw_object(ids[0], received, bodies)  # the key, lines and bytes the service would write
        for event_id, size, checksum, line in zip(ids, sizes, sums, obj.lines, strict=True):
            rows.append(EventMetadata(id=event_id, object_key=obj.key, line=line, size=size, checksum=checksum,
                                      received_at=received, source="bench", type="interaction"))
        if len(rows) >= chunk:
            repo.record(rows)
            rows = []
        path = root / obj.key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(obj.data)
    if rows:
        repo.record(rows)
    return broken


def _layout(per_object: int) -> str:
    """The layout's name in reports: `single` (one object per event) or `ndjson-N`."""
    return "single" if per_object == 1 else f"ndjson-{per_object}"


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
    p.add_argument("--per-object", type=int, default=1, metavar="N",
                   help="events per raw object: 1 = one object per event, N > 1 = NDJSON objects of N events "
                        "as the ingest service writes a batch or a group-commit flush (default %(default)s)")
    args = p.parse_args(argv)
    if args.events < 1 or args.days < 1 or args.runs < 1 or args.per_object < 1:
        p.error("--events, --days, --runs and --per-object must be positive")

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
            broken = generate(_directory(store.location()), repo, args.events, args.days, per_object=args.per_object)
            say(f"generated {args.events:,} raw events ({_layout(args.per_object)}) and their metadata over "
                f"{args.days} date(s) ({broken:,} torn) in {time.monotonic() - t0:.1f}s")
            job = container.etl_job()  # starts Spark, saying how long that took
            for n in range(1, args.runs + 1):
                run = job.run()
                rate = run.rows_read / run.duration_seconds
                say(f"run {n}: {run.rows_read:,} events read, {run.rows_written:,} written, "
                    f"{run.rows_rejected:,} rejected, {run.orphans:,} orphans, {run.missing:,} missing "
                    f"in {run.duration_seconds:.1f}s -> {rate:,.0f} rows/s")
        finally:
            container.shutdown_resources()  # stops Spark and closes the repository
    return 0


if __name__ == "__main__":
    sys.exit(main())
