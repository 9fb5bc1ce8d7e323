"""`wotr etl`: run the raw-to-curated job, show its run history, or benchmark it.

Configuration is the API's (`Settings.from_env()`): the profile decides whether the job
reads a local directory and the SQLite metadata (embedded) or an S3 bucket through s3a
and the PostgreSQL metadata (local).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import date
from typing import TYPE_CHECKING

from wotr_domain.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from wotr_domain.ports import MetadataRepo, ObjectStore

    from ..settings import Settings
    from .layout import Layout, Selection

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
    from ..container import build_container
    from ..settings import Settings
    from .history import RunHistory, render_table
    from .layout import Layout, Selection

    settings = Settings.from_env()
    layout = Layout.for_settings(settings)  # refuses the memory profile before anything starts
    container = build_container(settings)
    try:
        store = container.object_store()
        if args.history:
            print(render_table(RunHistory(store).runs(args.limit)))
            return 0
        repo = container.metadata_repo()
        return _etl(settings, store, repo, layout, Selection(date=args.date, since=args.since))
    finally:
        container.shutdown_resources()


def _etl(settings: Settings, store: ObjectStore, repo: MetadataRepo, layout: Layout, selection: Selection) -> int:
    from pyspark.sql import SparkSession

    from .jars import JarResolutionError, ensure_jars
    from .job import EtlJob
    from .session import spark_session

    say(f"wotr etl: profile {settings.profile}, {selection.describe()}, source {layout.uri('raw')}")
    try:
        jars = ensure_jars(say=say) if settings.profile == "local" else []
    except JarResolutionError as e:
        print(f"wotr etl: {e}", file=sys.stderr)
        return 4
    owned = SparkSession.getActiveSession() is None
    started = time.monotonic()
    spark = spark_session(settings.s3 if settings.profile == "local" else None, jars, say=say)
    if owned:
        say(f"Spark ready in {time.monotonic() - started:.1f}s")
    try:
        run = EtlJob(spark, store, repo, layout, say=say).run(selection)
    except Exception as e:  # the run is recorded as failed; say why in a line or two
        print(f"wotr etl: run failed: {_reason(e)}", file=sys.stderr)
        return 1
    finally:
        if owned:
            spark.stop()
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
