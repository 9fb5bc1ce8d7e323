"""`wotr etl`: run the raw-to-curated job, show its run history, or benchmark it.

Configuration is the API's (`Settings.from_env()`), and so is the wiring: the container
(`build_container(settings, role="etl")`) gives the layout, the job (its Spark session,
object store and metadata repository) and the run history; the profile decides there
whether that is a local directory and the SQLite metadata (embedded) or an S3 bucket
through s3a and the PostgreSQL metadata (local), and refuses the memory profile.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date

from wotr_domain.errors import ConfigError, Unavailable

__all__ = ["main", "parser"]


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wotr etl", description="Turn the raw JSON archive into curated Parquet.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--date", type=_day, metavar="YYYY-MM-DD", help="process this date only")
    what.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="process this date up to today")
    what.add_argument("--history", action="store_true", help="show the recorded runs instead of running")
    what.add_argument("--bench", type=int, metavar="N", help="benchmark: N generated events in a temp dir")
    p.add_argument("--limit", type=int, default=20, help="runs shown by --history (default %(default)s)")
    return p


def say(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines would drown the progress
    if args.bench is not None:
        from .bench import main as bench_main

        return bench_main(["--events", str(args.bench)])
    try:
        return _run(args)
    except ConfigError as e:
        print(f"wotr etl: configuration error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"wotr etl: {e}", file=sys.stderr)
        return 3


def _run(args: argparse.Namespace) -> int:
    from dependency_injector import providers

    from ..container import build_container
    from ..run_history import render_table
    from ..settings import Settings
    from .jars import JarResolutionError
    from .layout import Selection

    settings = Settings.from_env()
    container = build_container(settings, role="etl")
    container.etl_say.override(providers.Object(say))
    try:
        layout = container.etl_layout()  # refuses the memory profile before anything starts
        if args.history:
            print(render_table(container.run_history().runs(args.limit)))
            return 0
        container.ports()  # the object store and the metadata repository, started
        selection = Selection(date=args.date, since=args.since)
        say(f"wotr etl: profile {settings.profile}, {selection.describe()}, source {layout.uri('raw')}")
        try:
            job = container.etl_job()  # starts Spark (and resolves the s3a jars first, on a bucket)
        except JarResolutionError as e:
            print(f"wotr etl: {e}", file=sys.stderr)
            return 4
        try:
            run = job.run(selection)
        except Exception as e:  # the run is recorded as failed; say why in a line or two
            print(f"wotr etl: run failed: {_reason(e)}", file=sys.stderr)
            return 1
    finally:
        container.shutdown_resources()  # stops Spark (if this process started it) and the adapters
    if run.status == "succeeded":
        say(
            f"done in {run.duration_seconds:.1f}s: {run.rows_read:,} read, {run.rows_written:,} written, "
            f"{run.rows_rejected:,} rejected, {run.duplicates:,} duplicate(s), {run.orphans:,} orphan(s), "
            f"{run.missing:,} missing"
        )
        say(f"  curated   {layout.curated}")
        if run.rows_rejected:
            say(f"  rejected  {layout.rejected}")
        say(f"  history   wotr etl --history (run {run.run_id})")
    return 0


def _reason(error: BaseException) -> str:
    """The telling line of an error; a Java one says "An error occurred while calling ..." first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Exception:" in line or "Error:" in line:
            return line.removeprefix(": ")[:500]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


if __name__ == "__main__":
    sys.exit(main())
