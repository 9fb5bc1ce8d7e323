"""The ETL at growing archive sizes, in one process and one Spark session.

Raw events are generated as `wotr_apps.etl.bench` generates them (encoded and keyed as
the ingest service archives them, each with its metadata row in the embedded profile's
SQLite repository, one in 1,000 torn to exercise the checksum rejection) in one layout
(`--per-object`: 1 = one object per event, as a lone event is archived; N = NDJSON
objects of N events, as a batch or a group-commit flush is archived: 200 events per
flush under load), incrementally:
the archive grows to each size in turn (10k, then 90k more for 100k, ...) and the ETL
runs over the whole archive `--runs` times at each size (after `--warmup` runs at the
first size). Each step is printed as one JSON line as soon as it is done, so that the
harness can stop this process at its time bound and keep what finished.

    python -m bench.etl --sizes 10000,100000,1000000 --per-object 200 --runs 3 --warmup 1 \
        [--dir D] [--budgets 120,180,360]

Every line names its layout (`"layout": "ndjson-200"`, or `"single"`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.etl", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="archive sizes, ascending, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="measured ETL runs at each size")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs at the first size (JVM warm-up)")
    p.add_argument("--days", type=int, default=3, help="dates the events are spread over")
    p.add_argument("--per-object", type=int, default=200, help="events per raw object: 1 = one object per event, "
                   "N > 1 = NDJSON objects of N events as the ingest service writes them (default %(default)s)")
    p.add_argument("--dir", type=Path, default=None, help="data directory (default: a temporary one, removed after)")
    p.add_argument("--budgets", default="", help="seconds per size (comma-separated): no further run at a size is "
                   "started once the last one would end past its budget")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    budgets = [float(x) for x in args.budgets.split(",") if x.strip()] or [float("inf")]
    if sizes != sorted(sizes) or not sizes or sizes[0] < 1:
        p.error("--sizes must be positive and ascending")
    if args.per_object < 1:
        p.error("--per-object must be positive")

    from dependency_injector import providers

    from wotr_apps.container import build_container
    from wotr_apps.etl.bench import _directory, _layout, generate
    from wotr_apps.settings import Settings

    # Stopped at its time bound (SIGTERM): unwind, so that Spark stops and a temporary directory goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    layout = _layout(args.per_object)

    def emit(**fields) -> None:
        print(json.dumps({"layout": layout, **fields}), flush=True)

    with (tempfile.TemporaryDirectory(prefix="wotr-bench-etl-") if args.dir is None else nullcontext(args.dir)) as tmp:
        container = build_container(Settings(profile="embedded", data_dir=Path(tmp)), role="etl")
        container.etl_say.override(providers.Object(lambda m: print(f"# {m}", file=sys.stderr, flush=True)))
        try:
            store, repo = container.object_store(), container.metadata_repo()
            root = _directory(store.location())
            t0 = time.monotonic()
            job = container.etl_job()  # starts Spark
            emit(event="spark", seconds=time.monotonic() - t0, per_object=args.per_object)
            have, torn = 0, 0
            for index, size in enumerate(sizes):
                t0 = time.monotonic()
                budget = budgets[min(index, len(budgets) - 1)]
                torn += generate(root, repo, size - have, args.days, seed=7 + index, per_object=args.per_object)
                have = size
                emit(event="generated", size=size, seconds=time.monotonic() - t0, torn=torn)
                runs = [("warmup", args.warmup if index == 0 else 0), ("run", args.runs)]
                last = 0.0
                for kind, count in runs:
                    for k in range(count):
                        if kind == "run" and k > 0 and time.monotonic() - t0 + last > budget:
                            emit(event="skipped", size=size, runs=count - k, reason=f"budget {budget:g}s")
                            break
                        run = job.run()
                        last = run.duration_seconds
                        emit(event=kind, size=size, rows_read=run.rows_read, rows_written=run.rows_written,
                             rejected=run.rows_rejected, missing=run.missing, seconds=run.duration_seconds,
                             rows_per_s=run.rows_read / max(run.duration_seconds, 1e-9))
                emit(event="size_done", size=size)
        finally:
            container.shutdown_resources()  # stops Spark, closes the repository
    emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
