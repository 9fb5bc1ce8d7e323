"""`make bench` / `wotr bench` / `python -m bench`: measure every hop beside its ceiling.

Brings the native stack up (`wotr stack up`), starts wotr's processes on free loopback
ports with a topic, bucket and PostgreSQL schema of its own, runs bounded loads on
127.0.0.1, removes what it created, and writes bench/results/<timestamp>/report.{md,json}
with chart.png, and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .common import (
    REPO,
    Namespace,
    api_service,
    busy_test_runs,
    ensure_stack,
    ensure_wrk,
    load_average,
    say,
    tool_version,
)

RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    """How big each phase is. `full` is what `make bench` runs; `quick` is a smoke test."""

    saturation_s: float = 15.0
    health_s: float = 10.0
    rate: float = 1000.0
    low_rate: float = 100.0  # a rate the API sustains on this machine, for an end-to-end figure without overload
    fixed_s: float = 15.0
    connections: tuple[int, ...] = (16, 64)
    batch_sizes: tuple[int, ...] = (100, 1000)
    batch_connections: int = 4
    s3_s: float = 8.0
    pg_s: float = 5.0
    pg_copy_rows: int = 200_000
    drain_events: int = 200_000
    ch_rows: int = 200_000
    naive_s: float = 10.0
    etl_events: int = 20_000
    workers: tuple[int, ...] = (2,)
    profile_s: float = 10.0


FULL = Plan()
QUICK = Plan(saturation_s=3, health_s=3, rate=200, low_rate=50, fixed_s=3, connections=(16,), batch_sizes=(100,), s3_s=2, pg_s=2,
             pg_copy_rows=20_000, drain_events=20_000, ch_rows=20_000, naive_s=3, etl_events=2_000, workers=(2,),
             profile_s=4)


def machine_info() -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "n/a"

    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), 0)
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    try:
        import confluent_kafka

        librdkafka = confluent_kafka.libversion()[0]
    except Exception:
        librdkafka = "n/a"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1024 / 1024, 1),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {d: version(d) for d in ("litestar", "uvicorn", "uvloop", "httptools", "msgspec", "confluent-kafka",
                                               "psycopg", "psycopg-pool", "minio", "urllib3", "clickhouse-connect",
                                               "chdb", "opentelemetry-sdk", "pyspark")} | {"librdkafka": librdkafka},
        "wrk": tool_version(["wrk", "--version"]),
    }


def wait_for_quiet(minutes: float, threshold: float = 1.0) -> dict:
    """Poll every minute, up to `minutes`, for a 1-minute load average below `threshold`
    and no pytest on the machine; returns what was seen when measuring began."""
    deadline = time.monotonic() + minutes * 60
    while True:
        load1 = load_average()[0]
        tests = busy_test_runs()
        if load1 < threshold and not tests:
            return {"quiet": True, "load_average": load_average(), "waited_until": datetime.now(UTC).isoformat()}
        if time.monotonic() >= deadline:
            say(f"machine still busy (load {load1:.2f}, {len(tests)} pytest process(es)); measuring anyway")
            return {"quiet": False, "load_average": load_average(), "pytest": tests[:5]}
        say(f"waiting for a quiet machine: load {load1:.2f}, {len(tests)} pytest process(es)")
        time.sleep(60)


def cleanup(ns: Namespace, budget: float = 120.0) -> dict:
    """Remove our topics, schema and bucket (objects first), within `budget` seconds."""
    done: dict[str, str] = {}
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": ns.stack["KAFKA_BOOTSTRAP"]})
        names = [ns.topic, f"{ns.topic}.dlq", ns.drain_topic, f"{ns.drain_topic}.dlq"]
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [n for n in names if n in existing]
        futures = admin.delete_topics(doomed, request_timeout=15) if doomed else {}
        for f in futures.values():
            f.result(timeout=20)
        done["kafka"] = f"deleted {len(futures)} topic(s)"
    except Exception as e:
        done["kafka"] = f"failed: {e!r}"
    try:
        import psycopg
        from psycopg import sql

        with psycopg.connect(ns.postgres().conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(ns.schema)))
        done["postgres"] = f"dropped schema {ns.schema}"
    except Exception as e:
        done["postgres"] = f"failed: {e!r}"
    try:
        from minio.deleteobjects import DeleteObject

        from wotr_adapters.minio import minio_client

        client = minio_client(ns.s3())
        deadline = time.monotonic() + budget
        removed = 0
        if not client.bucket_exists(ns.bucket):
            raise LookupError("no bucket")
        while time.monotonic() < deadline:
            batch = []
            for obj in client.list_objects(ns.bucket, recursive=True):
                batch.append(DeleteObject(obj.object_name))
                if len(batch) >= 5000:
                    break
            if not batch:
                break
            for err in client.remove_objects(ns.bucket, batch):
                raise RuntimeError(f"delete failed: {err}")
            removed += len(batch)
        if time.monotonic() < deadline:
            client.remove_bucket(ns.bucket)
            done["s3"] = f"removed {removed:,} objects and bucket {ns.bucket}"
        else:
            done["s3"] = f"removed {removed:,} objects; bucket {ns.bucket} left (time budget)"
    except LookupError:
        done["s3"] = f"bucket {ns.bucket} was not created"
    except Exception as e:
        done["s3"] = f"failed: {e!r}"
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wotr bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small loads: a smoke test of the harness (a few minutes)")
    p.add_argument("--profile", action="store_true", help="also sample the API and the consumer with py-spy")
    p.add_argument("--no-etl", dest="etl", action="store_false", help="skip the ETL (Spark) row")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="MINUTES",
                   help="first wait up to MINUTES for load average < 1 and no pytest running (polled each minute)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and the topic/bucket/schema")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default %(default)s)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    t_start = time.monotonic()

    quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else {"quiet": None, "load_average": load_average()}
    say(f"load average {quiet['load_average'][0]:.2f} {quiet['load_average'][1]:.2f} {quiet['load_average'][2]:.2f}; "
        f"pytest processes: {len(busy_test_runs())}")
    say("bringing the stack up (wotr stack up)")
    stack = ensure_stack()
    wrk_path = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="wotr-bench-"))
    ns = Namespace(stack, work)
    say(f"namespace {ns.name} (topic, bucket, schema); work dir {work}")

    results: dict = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "plan": plan.__dict__ | {"connections": list(plan.connections), "batch_sizes": list(plan.batch_sizes),
                                  "workers": list(plan.workers)},
        "machine": machine_info(),
        "quiet": quiet,
        "namespace": ns.name,
        "ceilings": {},
        "hops": {},
        "profiles": {},
        "errors": [],
    }
    try:
        run_phases(args, plan, ns, wrk_path, results)
    except Exception as e:  # keep what was measured; the report says what failed
        results["errors"].append(f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
        say(f"FAILED: {e!r}")
    finally:
        if not args.keep:
            say("cleaning up topics, schema and bucket")
            results["cleanup"] = cleanup(ns)
            shutil.rmtree(work, ignore_errors=True)
        else:
            results["cleanup"] = {"kept": str(work)}
    results["load_average_after"] = load_average()
    results["duration_s"] = time.monotonic() - t_start

    from .report import write_report

    out_dir = write_report(results, args.out, started)
    say(f"report: {out_dir / 'report.md'} (and {args.out / 'latest.md'}); took {results['duration_s']:.0f}s")
    return 1 if results["errors"] else 0


def run_phases(args: argparse.Namespace, plan: Plan, ns: Namespace, wrk_path: str, results: dict) -> None:
    from wotr_adapters.clickhouse import ClickHouseAnalyticsSink, clickhouse_client
    from wotr_adapters.connections import ClickHouseConnection
    from wotr_adapters.kafka import KafkaEventBus
    from wotr_adapters.minio import MinioObjectStore, minio_client

    from . import ceilings, hops
    from .load import batch_body, event_body

    ceil, hop, errors = results["ceilings"], results["hops"], results["errors"]

    def phase(name: str, fn, *a, **kw):
        """Run one measurement; a failure is recorded and the rest goes on."""
        t0 = time.monotonic()
        try:
            value = fn(*a, **kw)
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {e}")
            say(f"  {name} FAILED: {e!r}")
            return None
        say(f"  {name}: {_headline(value)} ({time.monotonic() - t0:.0f}s)")
        return value

    MinioObjectStore(minio_client(ns.s3()), ns.bucket).start()
    bootstrap = ns.stack["KAFKA_BOOTSTRAP"]
    drain_bus = KafkaEventBus(bootstrap, ns.drain_topic, partitions=ns.kafka().partitions)
    drain_bus.start()
    ch_client = clickhouse_client(ClickHouseConnection(dsn=f"chdb://{ns.workdir / 'ch-bench'}"))

    say("API: wotr serve --api-only (1 process), local profile")
    api = api_service(ns).start()
    try:
        say("ceilings")
        ceil["http"] = phase("Litestar GET /health (wrk, 64 connections)", hops.saturate, wrk_path, api, "/health",
                             connections=64, duration=plan.health_s)
        ceil["s3_put"] = phase("S3 PUT", ceilings.s3_put, ns, seconds=plan.s3_s)
        ceil["s3_put_server"] = phase("S3 PUT, server only (wrk, presigned URLs)", ceilings.s3_put_server, ns, wrk_path,
                                      seconds=plan.s3_s)
        pg = phase("PostgreSQL INSERT and COPY", ceilings.postgres, ns, seconds=plan.pg_s, copy_rows=plan.pg_copy_rows)
        if pg:
            ceil["pg_insert"], ceil["pg_copy"] = pg
        say(f"  encoding {plan.drain_events:,} bus messages")
        messages = ceilings.bus_messages(plan.drain_events)
        ceil["kafka_produce"] = phase("Kafka produce (pre-fills the drain topic)", ceilings.kafka_produce, drain_bus, messages)
        del messages
        ceil["kafka_consume"] = phase("Kafka consume", ceilings.kafka_consume, bootstrap, ns.drain_topic, plan.drain_events)
        ch = phase("ClickHouse insert (columns; sink-style rows)", ceilings.clickhouse_insert, ch_client, rows=plan.ch_rows)
        if ch:
            ceil["clickhouse_insert"], ceil["clickhouse_insert_rows"] = ch

        say(f"hops: end to end at {plan.low_rate:g}/s (wotr consume running)")
        hop["e2e_low"] = phase("end to end, low rate", hops.end_to_end, api, rate=plan.low_rate, duration=plan.fixed_s)
        say(f"hops: single-event ingest, end to end at {plan.rate:g}/s (wotr consume running)")
        hop["e2e"] = phase("end to end", hops.end_to_end, api, rate=plan.rate, duration=plan.fixed_s)
        say(f"hops: single-event ingest at {plan.rate:g}/s offered (API alone)")
        hop["ingest_fixed"] = phase("ingest fixed rate", hops.fixed_rate, api, rate=plan.rate, duration=plan.fixed_s)
        for c in plan.connections:
            hop[f"ingest_sat_c{c}"] = phase(f"ingest saturation, {c} connections", hops.saturate, wrk_path, api, "/ingest",
                                            body=event_body(), connections=c, duration=plan.saturation_s)
        for size in plan.batch_sizes:
            hop[f"batch_{size}"] = phase(f"batch ingest, {size} per request", hops.saturate, wrk_path, api, "/ingest/batch",
                                         body=batch_body(size), connections=plan.batch_connections,
                                         duration=plan.saturation_s, per_request=size)
        if args.profile:
            say("profiling the API under saturation (py-spy)")
            results["profiles"]["api_single"] = _profiled(api.pid, ns.workdir / "api-single.folded", plan.profile_s,
                                                          lambda: hops.saturate(wrk_path, api, "/ingest", body=event_body(),
                                                                                connections=max(plan.connections),
                                                                                duration=plan.profile_s))
            results["profiles"]["api_batch"] = _profiled(api.pid, ns.workdir / "api-batch.folded", plan.profile_s,
                                                         lambda: hops.saturate(wrk_path, api, "/ingest/batch",
                                                                               body=batch_body(max(plan.batch_sizes)),
                                                                               connections=plan.batch_connections,
                                                                               duration=plan.profile_s,
                                                                               per_request=max(plan.batch_sizes)))
    finally:
        api.stop()

    say(f"hops: consumer, Kafka -> ClickHouse, {plan.drain_events:,} events pre-filled")
    sink = ClickHouseAnalyticsSink(ch_client, "benchdrain")
    sink.start()
    hop["consumer"] = phase("consumer, batches of 5000", hops.consumer_drain, drain_bus, sink, f"{ns.name}-drain",
                            target=plan.drain_events, batch_size=5000, batch_seconds=0.2, seconds=120)
    naive_sink = ClickHouseAnalyticsSink(ch_client, "benchnaive")
    naive_sink.start()
    hop["consumer_naive"] = phase("consumer, batches of 1", hops.consumer_drain, drain_bus, naive_sink,
                                  f"{ns.name}-naive", target=plan.drain_events, batch_size=1, batch_seconds=0.2,
                                  seconds=plan.naive_s)
    if args.profile:
        say("profiling the consumer (py-spy on this process)")
        prof_sink = ClickHouseAnalyticsSink(ch_client, "benchprof")
        prof_sink.start()
        results["profiles"]["consumer"] = _profiled(
            os.getpid(), ns.workdir / "consumer.folded", plan.profile_s,
            lambda: hops.consumer_drain(drain_bus, prof_sink, f"{ns.name}-prof", target=plan.drain_events,
                                        batch_size=5000, batch_seconds=0.2, seconds=plan.profile_s), subprocesses=False)
    for database in ("benchdrain", "benchnaive", "benchprof"):
        ch_client.command(f"DROP DATABASE IF EXISTS {database}")
    drain_bus.close()

    for workers in plan.workers:
        say(f"API with {workers} uvicorn workers (bench.server; one engine directory per worker)")
        api = api_service(ns, workers=workers)
        try:
            api.start()
        except Exception as e:
            errors.append(f"API with {workers} workers did not start: {e}")
            continue
        try:
            ceil[f"http_w{workers}"] = phase(f"{workers} workers: Litestar GET /health", hops.saturate, wrk_path, api,
                                             "/health", connections=64, duration=plan.health_s / 2)
            hop[f"w{workers}_fixed"] = phase(f"{workers} workers: ingest at {plan.rate:g}/s", hops.fixed_rate, api,
                                             rate=plan.rate, duration=plan.fixed_s)
            c = max(plan.connections)
            hop[f"w{workers}_sat"] = phase(f"{workers} workers: ingest saturation, {c} connections", hops.saturate,
                                           wrk_path, api, "/ingest", body=event_body(), connections=c,
                                           duration=plan.saturation_s)
            b = max(plan.batch_sizes)
            hop[f"w{workers}_batch"] = phase(f"{workers} workers: batch ingest, {b} per request", hops.saturate, wrk_path,
                                             api, "/ingest/batch", body=batch_body(b), connections=plan.batch_connections,
                                             duration=plan.saturation_s, per_request=b)
        finally:
            api.stop()

    if args.etl:
        say(f"ETL: python -m wotr_apps.etl.bench --events {plan.etl_events}")
        hop["etl"] = phase("ETL", hops.etl, plan.etl_events)
    else:
        hop["etl"] = {"skipped": "--no-etl"}


def _profiled(pid: int, out: Path, seconds: float, work, subprocesses: bool = True) -> dict:
    from . import profiling

    sampler = profiling.record(pid, seconds + 1, out, subprocesses=subprocesses)
    if sampler is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    time.sleep(0.5)
    measured = work()
    try:
        _, err = sampler.communicate(timeout=seconds + 30)
    except Exception:
        sampler.kill()
        err = b""
    summary = profiling.summarize(out)
    if sampler.returncode not in (0, None) and not summary.get("samples"):
        summary["error"] = (err or b"").decode(errors="replace")[-500:]
    summary["measured_while_sampling"] = _headline(measured)
    return summary


def _headline(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return "; ".join(_headline(v) for v in value)
    if not isinstance(value, dict):
        return str(value)
    if "skipped" in value:
        return f"skipped: {value['skipped'][:80]}"
    if "e2e_ms" in value:
        e = value["e2e_ms"]
        l = value["latency_ms"]
        return (f"e2e p50 {e.get('p50', float('nan')):.0f} ms p99 {e.get('p99', float('nan')):.0f} ms; "
                f"ingest p99 {l.get('p99', float('nan')):.1f} ms; {value['ok']}/{value['requests']} ok")
    if "latency_ms" in value and "offered_rate" in value:
        l = value["latency_ms"]
        return (f"{value['achieved_rate']:,.0f}/s of {value['offered_rate']:,.0f}/s offered, p50 {l.get('p50', 0):.1f} "
                f"p95 {l.get('p95', 0):.1f} p99 {l.get('p99', 0):.1f} ms, errors {value['errors'] or 0}")
    if "events_per_s" in value:
        return (f"{value['events_per_s']:,.0f} events/s ({value['requests_per_s']:,.0f} req/s, errors {value['errors']}, "
                f"server {value['cpu'].get('server_cores', 0):.2f} cores, wrk {value['generator_cpu_cores']:.2f} cores)")
    if "rows_per_s" in value:
        return f"{value['rows_per_s']:,.0f} rows/s ({value.get('rows', value.get('events', '?')):,} rows)"
    if "value" in value:
        return f"{value['value']:,.0f} {value['unit']}"
    if "samples" in value:
        return f"{value['samples']} samples"
    return json.dumps(value)[:100]


if __name__ == "__main__":
    sys.exit(main())
