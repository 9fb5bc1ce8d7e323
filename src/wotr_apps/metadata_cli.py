"""`wotr metadata prune`: the metadata table's retention job.

Deletes the rows of `published` events received more than `--older-than` days ago, in
batches of `--batch-size` rows, each its own short transaction, so the API, the relay
and the other readers keep running meanwhile. Rows still `stored` (the outbox: events
not yet on the bus) are never deleted, however old. Run it daily (cron, a Kubernetes
CronJob); a second run at once deletes nothing.

    wotr metadata prune --older-than 90 [--batch-size 10000]

Choose the bound above how far back the archive's readers go and clients retry: an event
whose metadata row is gone is no longer an event to the ETL and to `wotr replay` (its
archived bytes become an orphan), and its id is free again. Why retention rather than
partitioning: docs/scaling.md.

The last line on stdout is the summary (`pruned N published rows ...`); exit status 0,
2 for a configuration error, 3 when the metadata store is unavailable (the rows deleted
so far stay deleted: run it again).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from wotr_domain.errors import ConfigError, Unavailable
from wotr_domain.models import EventStatus
from wotr_domain.ports import MetadataRepo

__all__ = ["PruneSummary", "main", "parser", "prune"]


@dataclass(frozen=True, slots=True)
class PruneSummary:
    cutoff: datetime
    deleted: int
    batches: int
    seconds: float
    rows_left: int
    stored_left: int

    def __str__(self) -> str:
        return (f"pruned {self.deleted} published rows received before {self.cutoff:%Y-%m-%dT%H:%M:%SZ} "
                f"in {self.batches} batches ({self.seconds:.2f} s); {self.rows_left} rows left, "
                f"{self.stored_left} of them stored (never pruned)")


def prune(repo: MetadataRepo, older_than: timedelta, batch_size: int = 10_000, *,
          now: datetime | None = None, say=None) -> PruneSummary:
    """Delete published rows received before `now - older_than`, `batch_size` at a time,
    until a batch deletes nothing."""
    cutoff = (now or datetime.now(UTC)) - older_than
    started = time.monotonic()
    deleted = batches = 0
    while True:
        n = repo.prune_published(cutoff, batch_size)
        if n == 0:
            break
        batches += 1
        deleted += n
        if say is not None:
            say(f"batch {batches}: {n} rows deleted ({deleted} so far)")
    return PruneSummary(cutoff, deleted, batches, time.monotonic() - started,
                        repo.count(), repo.count(EventStatus.STORED))


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of days")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wotr metadata", description="Maintenance of the event metadata table.")
    sub = p.add_subparsers(dest="action", required=True)
    prune_cmd = sub.add_parser("prune", help="delete published rows older than a bound, in batches (never stored ones)")
    prune_cmd.add_argument("--older-than", type=_days, required=True, metavar="DAYS",
                           help="delete rows of events received more than DAYS days ago (fractions allowed)")
    prune_cmd.add_argument("--batch-size", type=_positive, default=10_000, metavar="N",
                           help="rows per transaction (default %(default)s)")
    prune_cmd.add_argument("-q", "--quiet", action="store_true", help="print the summary line only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .container import build_container
    from .settings import Settings

    try:
        settings = Settings.from_env()
        if settings.profile == "memory":
            raise ConfigError("WOTR_PROFILE", "memory keeps the metadata inside the API process: use embedded or local")
        container = build_container(settings)
        try:
            summary = prune(container.metadata_repo(), timedelta(days=args.older_than), args.batch_size,
                            say=None if args.quiet else print)
        finally:
            container.shutdown_resources()
    except ConfigError as e:
        print(f"wotr metadata: configuration error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"wotr metadata: {e}", file=sys.stderr)
        return 3
    print(summary, flush=True)
    return 0
