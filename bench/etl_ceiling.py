"""Spark alone on an ETL benchmark archive: the ceiling of the ETL's Spark work.

Reads every line of the NDJSON objects that `python -m bench.etl --dir D` left in D,
hashes it (SHA-256, as the ETL verifies) and parses it against the ETL's raw schema, with
the ETL's own session settings, then writes Parquet; nothing is matched to metadata,
deduplicated or classified. The gap between these times and an ETL run over the same
archive is the ETL's own work (metadata read, match, dedupe, classify, two outputs).

    python -m bench.etl --sizes 1000000 --per-object 200 --runs 1 --dir /tmp/etl-archive
    python -m bench.etl_ceiling --dir /tmp/etl-archive [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.etl_ceiling", description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="the data directory of a `bench.etl --dir` run")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds of every step (after one warm-up)")
    args = p.parse_args(argv)
    paths = sorted(str(d) for d in (args.dir / "objects").glob("*/raw/dt=*"))
    if not paths:
        p.error(f"no raw archive under {args.dir / 'objects'}: run `python -m bench.etl --dir {args.dir}` first")

    from pyspark.sql import functions as F

    from wotr_apps.etl.schema import RAW_SCHEMA
    from wotr_apps.etl.session import spark_session

    spark = spark_session()
    lines = spark.read.text(paths)
    hashed = lines.select(F.sha2(F.col("value"), 256).alias("sha256"), F.from_json("value", RAW_SCHEMA).alias("e"))
    parsed = hashed.select("sha256", "e.*")
    with tempfile.TemporaryDirectory(prefix="wotr-etl-ceiling-") as out:
        steps: dict[str, Callable[[], object]] = {
            "read lines": lines.count,
            "read + SHA-256": lambda: hashed.select("sha256").write.format("noop").mode("overwrite").save(),
            "read + SHA-256 + parse": lambda: parsed.write.format("noop").mode("overwrite").save(),
            "read + SHA-256 + parse + Parquet": lambda: parsed.write.mode("overwrite").parquet(f"{out}/curated"),
        }
        rows = lines.count()
        _timed("warm-up", steps["read + SHA-256 + parse"], rows)
        for n in range(1, args.rounds + 1):
            for label, step in steps.items():
                _timed(f"{label} (round {n})", step, rows)
    spark.stop()
    return 0


def _timed(label: str, step: Callable[[], object], rows: int) -> None:
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s, {rows / seconds:,.0f} lines/s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
