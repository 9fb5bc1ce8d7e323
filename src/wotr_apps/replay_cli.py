"""`wotr replay`: republish archived events of a date range to the bus.

The events come from the raw archive, found through their metadata rows and verified
against their checksums (`wotr_domain.services.replay`). `--topic` publishes into another
topic (filling a new downstream) instead of the configured one.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date

from wotr_domain.errors import ConfigError, Unavailable
from wotr_domain.services import ReplayReport

__all__ = ["main", "parser"]


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of events per second")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wotr replay",
        description="Republish the archived events received in a date range (UTC) to the bus; "
        "every event's bytes are verified against its metadata checksum first.",
    )
    p.add_argument("--since", type=_day, required=True, metavar="YYYY-MM-DD", help="first date to replay")
    p.add_argument("--until", type=_day, metavar="YYYY-MM-DD", help="last date to replay (default: --since)")
    p.add_argument("--source", help="only events of this source")
    p.add_argument("--topic", help="publish into this topic instead of the configured one")
    p.add_argument("--rate", type=_rate, metavar="EVENTS_PER_S", help="publish at most this many events per second")
    p.add_argument("--dry-run", action="store_true", help="read and verify, publish nothing")
    return p


def _progress(report: ReplayReport) -> None:
    rate = report.published / report.seconds if report.seconds > 0 else 0.0
    sys.stderr.write(
        f"\rreplay: {report.events:,} events, {report.objects:,} objects, {report.published:,} published"
        f" ({rate:,.0f}/s), {report.mismatches + report.missing:,} faults"
    )
    sys.stderr.flush()


def summary(report: ReplayReport, dry_run: bool) -> str:
    verb = "verified (dry run, nothing published)" if dry_run else "published"
    count = report.verified if dry_run else report.published
    return (
        f"replay: {report.events:,} events in {report.objects:,} objects; {count:,} {verb}; "
        f"{report.mismatches:,} checksum mismatches, {report.missing:,} missing; {report.seconds:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every event was replayed, 1 when some were faulty, 2/3 on configuration/outage."""
    args = parser().parse_args(argv)
    if args.until is not None and args.until < args.since:
        parser().error(f"--until {args.until} is before --since {args.since}")
    from .container import build_container
    from .settings import Settings

    env = dict(os.environ)
    if args.topic:
        env["KAFKA_TOPIC"] = args.topic
    try:
        container = build_container(Settings.from_env(env))
        try:
            report = container.replay().run(
                args.since, args.until, source=args.source, dry_run=args.dry_run, rate=args.rate,
                progress=_progress if sys.stderr.isatty() else None,
            )
        finally:
            container.shutdown_resources()
    except ConfigError as e:
        print(f"wotr replay: configuration error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"\nwotr replay: {e} (nothing is lost: run it again)", file=sys.stderr)
        return 3
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(summary(report, args.dry_run))
    return 1 if report.mismatches or report.missing else 0
