"""`make bench` / `wotr bench` / `python -m bench`: measure every hop beside its ceiling.

Brings the native stack up (`wotr stack up`), starts wotr's processes on free loopback
ports with a topic, bucket and PostgreSQL schema of its own, runs bounded loads on
127.0.0.1, removes what it created, and writes bench/results/<timestamp>/report.{md,json}
with chart.png, and bench/results/latest.md.

In one run: the ceilings (the bare framework among them: Litestar + msgspec, no I/O,
bench/bare.py), the open-loop generator checked against wrk, every hop of wotr with its
headline figures repeated (`Plan.reps`; median and min-max), the production edge
(overload at 1.5x and 3x the measured saturation; write keys and gzip beside the plain
run), memory (peak RSS of every process, the API's RSS over a sustained run), scale-out
from 1 to 2 API and consumer processes, and the ETL at growing archive sizes, each size
bounded in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
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
    PEAK_RSS,
    PY,
    REPO,
    Namespace,
    api_service,
    bare_service,
    busy_test_runs,
    ensure_stack,
    ensure_wrk,
    load_average,
    raise_open_files,
    say,
    tool_version,
)

RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    """How big each phase is. `full` is what `make bench` runs; `quick` is a smoke test
    (the same phases and code, smaller loads, one repetition)."""

    reps: int = 3  # repetitions of every headline figure: the report gives the median and min-max
    saturation_s: float = 8.0
    health_s: float = 5.0
    rate: float = 1000.0  # the goal's offered rate for POST /ingest and end to end
    low_rate: float = 100.0  # the goal's low rate for end to end (and the generator check)
    fixed_s: float = 10.0
    connections: tuple[int, ...] = (64,)  # wrk connections for saturation (the bare framework: the first)
    batch_sizes: tuple[int, ...] = (100, 1000)  # the last is the goal's batch (repeated); others once
    batch_connections: int = 4
    s3_s: float = 6.0
    pg_s: float = 4.0
    pg_copy_rows: int = 200_000
    drain_events: int = 200_000
    drain_partitions: int = 4  # the drain topics: an even split for 2 consumer processes
    ch_rows: int = 200_000
    naive_s: float = 8.0
    workers: tuple[int, ...] = (2,)  # API processes for scale-out (bench/server.py), beside 1
    consumers: tuple[int, ...] = (1, 2)  # `wotr consume` processes in one group
    overload_factors: tuple[float, ...] = (1.5, 3.0)  # x the measured POST /ingest saturation
    overload_s: float = 10.0
    overload_connections: int = 8000  # more than the API holds (queue + flushes), so the API refuses, not the pool
    sustained_s: float = 60.0  # the API's RSS over a run this long
    # The headline ETL layout: NDJSON objects of 200 events, as the group commit archives under load.
    etl_per_object: int = 200
    etl_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    etl_budgets: tuple[float, ...] = (90.0, 120.0, 240.0)  # seconds per size (generation + runs)
    etl_runs: int = 3
    etl_warmup: int = 1
    # Further layouts, after it: (events per object, sizes, budgets); 1 = one object per event.
    etl_also: tuple[tuple[int, tuple[int, ...], tuple[float, ...]], ...] = ((1, (10_000, 100_000), (90.0, 120.0)),)
    profile_s: float = 10.0
    budget_s: float = 29 * 60.0  # the whole run; the ETL's last size gets what is left


FULL = Plan()
QUICK = Plan(reps=1, saturation_s=3, health_s=3, fixed_s=3, batch_sizes=(1000,), s3_s=2, pg_s=2, pg_copy_rows=20_000,
             drain_events=20_000, ch_rows=20_000, naive_s=3, overload_s=4, sustained_s=10,
             etl_sizes=(1_000, 2_000, 4_000), etl_budgets=(100.0, 60.0, 60.0), etl_runs=1, etl_warmup=0,
             etl_also=((1, (1_000, 2_000), (60.0, 60.0)),),
             profile_s=4, budget_s=9 * 60.0)


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
        existing = set(admin.list_topics(timeout=10).topics)
        # The namespace's topics: its events, the drain topic, the scale-out topics, their .dlq.
        doomed = [n for n in existing if n == ns.topic or n.startswith((f"{ns.name}-", f"{ns.name}."))]
        futures = admin.delete_topics(doomed, request_timeout=15) if doomed else {}
        for f in futures.values():
            f.result(timeout=20)
        done["kafka"] = f"deleted {len(futures)} topic(s)"
        try:
            groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=10).result(timeout=15).valid
                      if g.group_id.startswith(ns.name)]
            for f in (admin.delete_consumer_groups(groups, request_timeout=15) if groups else {}).values():
                f.result(timeout=20)
            done["kafka"] += f", {len(groups)} consumer group(s)"
        except Exception as e:
            done["kafka"] += f"; consumer groups left ({e!r})"[:200]
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
    p.add_argument("--ingest-queue-max", type=int, default=None, metavar="N",
                   help="run the overload phase against an API with WOTR_INGEST_QUEUE_MAX=N (default: wotr's default)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    t_start = time.monotonic()
    open_files = raise_open_files()

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
        "plan": dataclasses.asdict(plan),
        "open_files_limit": open_files,
        "machine": machine_info(),
        "quiet": quiet,
        "namespace": ns.name,
        "ceilings": {},
        "hops": {},
        "profiles": {},
        "errors": [],
    }
    try:
        run_phases(args, plan, ns, wrk_path, results, deadline=t_start + plan.budget_s)
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
    results["rss"] = {"services": list(PEAK_RSS),
                      "harness": {"pid": os.getpid(), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "cmd": "python -m bench (ceilings' clients, in-process consumer drain)"}}

    from .report import write_report

    try:
        out_dir = write_report(results, args.out, started)
    except Exception:
        say(f"writing the report failed (the measurements are in {args.out}/<timestamp>/report.json; "
            f"`python -c 'from bench.report import rerender; rerender(PATH)'` writes it again):\n"
            f"{traceback.format_exc()[-3000:]}")
        return 1
    say(f"report: {out_dir / 'report.md'} (and {args.out / 'latest.md'}); took {results['duration_s']:.0f}s")
    return 1 if results["errors"] else 0


def _p99(r: dict) -> float:
    return r.get("latency_ms", {}).get("p99", float("inf"))


def create_write_key(ns: Namespace) -> str:
    """A write key made the way an operator makes one: `wotr keys create -q` on the
    namespace's PostgreSQL schema (the key store of the local profile)."""
    out = subprocess.run([PY, "-m", "wotr_apps.cli", "keys", "create", "-q", "--name", f"{ns.name}-bench"],
                         env=ns.env("keys"), capture_output=True, text=True, timeout=120, cwd=ns.workdir)
    key = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0 or not key:
        raise RuntimeError(f"wotr keys create failed ({out.returncode}): {out.stderr[-1000:]}")
    return key


def run_phases(args: argparse.Namespace, plan: Plan, ns: Namespace, wrk_path: str, results: dict, *,
               deadline: float) -> None:
    from wotr_adapters.clickhouse import ClickHouseAnalyticsSink, clickhouse_client
    from wotr_adapters.connections import ClickHouseConnection
    from wotr_adapters.kafka import KafkaEventBus
    from wotr_adapters.minio import MinioObjectStore, minio_client
    from wotr_apps.settings import variable

    from . import ceilings, hops
    from .load import batch_body, event_body

    ceil, hop, errors = results["ceilings"], results["hops"], results["errors"]
    reps = plan.reps
    eps = lambda r: r["events_per_s"]  # noqa: E731
    rps = lambda r: r["requests_per_s"]  # noqa: E731

    def phase(name: str, fn, *a, **kw):
        """Run one measurement; a failure is recorded and the rest goes on."""
        t0 = time.monotonic()
        try:
            value = fn(*a, **kw)
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {e}"[:3000])
            say(f"  {name} FAILED: {e!r}"[:400])
            return None
        errors.extend(e[:3000] for e in _failures(value, name))
        say(f"  {name}: {_headline(value)} ({time.monotonic() - t0:.0f}s)")
        return value

    def reps_of(name: str, fn, metric, metric_name: str, n: int = reps):
        return phase(name, hops.repeat, fn, n, metric, metric_name)

    MinioObjectStore(minio_client(ns.s3()), ns.bucket).start()
    bootstrap = ns.stack["KAFKA_BOOTSTRAP"]
    drain_bus = KafkaEventBus(bootstrap, ns.drain_topic, partitions=plan.drain_partitions)
    drain_bus.start()
    ch_client = clickhouse_client(ClickHouseConnection(dsn=f"chdb://{ns.workdir / 'ch-bench'}"))
    queue_max = args.ingest_queue_max or int(variable("WOTR_INGEST_QUEUE_MAX").default)
    results["settings"] = {"WOTR_INGEST_QUEUE_MAX": queue_max,
                           "WOTR_INGEST_QUEUE_MAX_default": int(variable("WOTR_INGEST_QUEUE_MAX").default),
                           "WOTR_INGEST_FLUSHES": int(variable("WOTR_INGEST_FLUSHES").default),
                           "WOTR_INGEST_IN_FLIGHT_MAX": int(variable("WOTR_INGEST_IN_FLIGHT_MAX").default),
                           "WOTR_ACCESS_LOG": variable("WOTR_ACCESS_LOG").default,
                           "WOTR_WRITE_KEY_CACHE_SECONDS": variable("WOTR_WRITE_KEY_CACHE_SECONDS").default}
    sat_c = plan.connections[0]

    # -- ceilings --------------------------------------------------------------------------
    say("ceilings")
    ceil["s3_put"] = phase("S3 PUT", ceilings.s3_put, ns, seconds=plan.s3_s)
    ceil["s3_put_server"] = phase("S3 PUT, server only (wrk, presigned URLs)", ceilings.s3_put_server, ns, wrk_path,
                                  seconds=plan.s3_s)
    pg = phase("PostgreSQL INSERT and COPY", ceilings.postgres, ns, seconds=plan.pg_s, copy_rows=plan.pg_copy_rows)
    if pg:
        ceil["pg_insert"], ceil["pg_copy"] = pg
    say(f"  encoding {plan.drain_events:,} bus messages")
    messages = ceilings.bus_messages(plan.drain_events)
    ceil["kafka_produce"] = phase("Kafka produce (pre-fills the drain topic)", ceilings.kafka_produce, drain_bus, messages)
    ceil["kafka_consume"] = phase("Kafka consume", ceilings.kafka_consume, bootstrap, ns.drain_topic, plan.drain_events)
    ch = phase("ClickHouse insert (columns; sink-style rows)", ceilings.clickhouse_insert, ch_client, rows=plan.ch_rows)
    if ch:
        ceil["clickhouse_insert"], ceil["clickhouse_insert_rows"] = ch

    # -- the bare framework: the ceiling of the HTTP hop, and the generator check --------------
    say("bare framework: Litestar + msgspec, no I/O (bench/bare.py), 1 process")
    bare = bare_service(ns)
    try:
        bare.start()
        ceil["bare_post"] = reps_of(f"bare POST /ingest (wrk, {sat_c} connections)", lambda: hops.saturate(
            wrk_path, bare, "/ingest", body=event_body(), connections=sat_c, duration=plan.saturation_s), eps, "events/s")
        ceil["bare_health"] = reps_of(f"bare GET /health (wrk, {sat_c} connections)", lambda: hops.saturate(
            wrk_path, bare, "/health", connections=sat_c, duration=plan.health_s), rps, "requests/s", n=1)
        if ceil["bare_post"] and "reps" in ceil["bare_post"]:
            say("open-loop generator beside wrk (bare POST /ingest)")
            results["generator_check"] = phase("generator check", hops.generator_check, wrk_path, bare,
                                               wrk_saturation=ceil["bare_post"], low_rate=plan.low_rate,
                                               duration=plan.fixed_s)
    except Exception as e:
        errors.append(f"bare framework: {type(e).__name__}: {e}"[:3000])
    finally:
        bare.stop()

    # -- wotr's API, 1 process ---------------------------------------------------------------
    say("API: wotr serve --api-only (1 process), local profile, wotr's defaults")
    try:
        api_phases(args, plan, ns, wrk_path, results, phase, reps_of, queue_max)
    except Exception as e:  # the API did not start: the consumer, scale-out and ETL phases still run
        errors.append(f"API phases: {type(e).__name__}: {e}"[:3000])
        say(f"  API phases FAILED: {e!r}"[:400])

    # -- the consumer, in this process ---------------------------------------------------------
    say(f"consumer, Kafka -> ClickHouse, {plan.drain_events:,} events pre-filled, {reps}x")
    sinks: list[str] = []

    def drain(rep: list[int] = [0]) -> dict:  # noqa: B006 (a counter across calls)
        rep[0] += 1
        database = f"benchdrain{rep[0]}"
        sinks.append(database)
        sink = ClickHouseAnalyticsSink(ch_client, database)
        sink.start()
        return hops.consumer_drain(drain_bus, sink, f"{ns.name}-drain{rep[0]}", target=plan.drain_events,
                                   batch_size=5000, batch_seconds=0.2, seconds=120)

    hop["consumer"] = reps_of("consumer, batches of 5000", drain, lambda r: r["rows_per_s"], "rows/s")
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
    for database in (*sinks, "benchnaive", "benchprof"):
        ch_client.command(f"DROP DATABASE IF EXISTS {database}")
    drain_bus.close()

    # -- scale-out: 1 -> N API processes, 1 -> N consumer processes ---------------------------
    for workers in plan.workers:
        say(f"scale-out: bare framework with {workers} processes")
        bare = bare_service(ns, workers=workers)
        try:
            bare.start()
            ceil[f"bare_post_w{workers}"] = reps_of(f"{workers} processes: bare POST /ingest", lambda: hops.saturate(
                wrk_path, bare, "/ingest", body=event_body(), connections=sat_c, duration=plan.saturation_s), eps,
                "events/s")
        except Exception as e:
            errors.append(f"bare framework with {workers} processes: {type(e).__name__}: {e}"[:2000])
        finally:
            bare.stop()
        say(f"scale-out: API with {workers} uvicorn workers (bench.server; one engine directory per worker)")
        api = api_service(ns, workers=workers)
        try:
            api.start()
        except Exception as e:
            errors.append(f"API with {workers} workers did not start: {e}"[:3000])
            continue
        try:
            ceil[f"http_w{workers}"] = reps_of(f"{workers} workers: wotr GET /health", lambda: hops.saturate(
                wrk_path, api, "/health", connections=sat_c, duration=plan.health_s), rps, "requests/s", n=1)
            hop[f"w{workers}_sat"] = reps_of(f"{workers} workers: ingest saturation, {sat_c} connections",
                                             lambda: hops.saturate(wrk_path, api, "/ingest", body=event_body(),
                                                                   connections=sat_c, duration=plan.saturation_s),
                                             eps, "events/s")
            hop[f"w{workers}_fixed"] = reps_of(f"{workers} workers: ingest at {plan.rate:g}/s", lambda: hops.fixed_rate(
                api, rate=plan.rate, duration=plan.fixed_s), _p99, "p99 ms")
            b = plan.batch_sizes[-1]
            hop[f"w{workers}_batch"] = reps_of(f"{workers} workers: batch ingest, {b} per request", lambda: hops.saturate(
                wrk_path, api, "/ingest/batch", body=batch_body(b), connections=plan.batch_connections,
                duration=plan.saturation_s, per_request=b), eps, "events/s")
        finally:
            api.stop()
    for n in plan.consumers:
        say(f"scale-out: {n} `wotr consume` process(es) in one group, {plan.drain_partitions} partitions, "
            f"{plan.drain_events:,} events per repetition")
        hop[f"consume_p{n}"] = phase(f"{n} consumer process(es)", hops.consumer_processes, ns, n, messages,
                                     partitions=plan.drain_partitions, reps=reps)
    del messages

    # -- the ETL at growing sizes, bounded ------------------------------------------------------
    if args.etl:
        left = deadline - time.monotonic() - 60  # a minute for clean-up and the report
        budgets = list(plan.etl_budgets)
        also = tuple((n, list(sizes), list(bounds)) for n, sizes, bounds in plan.etl_also)
        if also and left < sum(budgets) + sum(sum(b) for _, _, b in also) + 30 * len(also):  # + Spark's start
            say("  the run's time budget leaves no time for the other ETL layouts; the headline layout only")
            also = ()
        if left < sum(budgets):
            budgets[-1] = max(30.0, left - sum(budgets[:-1]))
            say(f"  the run's time budget leaves the last ETL size {budgets[-1]:.0f}s")
        say(f"ETL at {', '.join(f'{s:,}' for s in plan.etl_sizes)} archived events, {plan.etl_per_object} per object "
            f"(python -m bench.etl; budgets {', '.join(f'{b:.0f}s' for b in budgets)})"
            + "".join(f"; then {', '.join(f'{s:,}' for s in sizes)}, {n} per object" for n, sizes, _ in also))
        hop["etl"] = phase("ETL", hops.etl_sizes, list(plan.etl_sizes), runs=plan.etl_runs, warmup=plan.etl_warmup,
                           budgets=budgets, workdir=ns.workdir / "etl", per_object=plan.etl_per_object, also=also)
        if hop["etl"] and hop["etl"].get("error"):
            errors.append(f"ETL: {hop['etl']['error']}"[:2000])
    else:
        hop["etl"] = {"skipped": "--no-etl"}


def api_phases(args: argparse.Namespace, plan: Plan, ns: Namespace, wrk_path: str, results: dict, phase, reps_of,
               queue_max: int) -> None:
    """wotr's API, one process (`wotr serve --api-only`): its /health, end to end with the
    consumer, the fixed rate, saturation (plain, gzip, write key), the sustained run,
    batches, overload; the API is stopped at the end whatever happens."""
    import gzip

    from . import hops
    from .load import batch_body, event_body

    ceil, hop, errors = results["ceilings"], results["hops"], results["errors"]
    reps, sat_c = plan.reps, plan.connections[0]
    eps = lambda r: r["events_per_s"]  # noqa: E731
    rps = lambda r: r["requests_per_s"]  # noqa: E731
    api = api_service(ns).start()
    try:
        ceil["http"] = reps_of(f"wotr GET /health (wrk, {sat_c} connections)", lambda: hops.saturate(
            wrk_path, api, "/health", connections=sat_c, duration=plan.health_s), rps, "requests/s", n=1)

        say(f"end to end at {plan.low_rate:g}/s and {plan.rate:g}/s offered, {reps}x each (wotr consume running)")
        e2e = phase("end to end", hops.end_to_end, api, rates=[("e2e_low", plan.low_rate), ("e2e", plan.rate)],
                    duration=plan.fixed_s, reps=reps) or {}
        for key in ("e2e_low", "e2e"):
            hop[key] = e2e.get(key)

        say(f"POST /ingest at {plan.rate:g}/s offered (API alone)")
        hop["ingest_fixed"] = reps_of("ingest fixed rate", lambda: hops.fixed_rate(api, rate=plan.rate,
                                                                                   duration=plan.fixed_s),
                                      _p99, "p99 ms")

        say(f"POST /ingest saturation: plain, gzip body, write key (a second API with WOTR_REQUIRE_WRITE_KEY=true), "
            f"and the memory profile (a third API, no I/O), in turn, {reps}x")
        body = event_body()
        variants = {
            "plain": lambda: hops.saturate(wrk_path, api, "/ingest", body=body, connections=sat_c,
                                           duration=plan.saturation_s),
            "gzip": lambda: hops.saturate(wrk_path, api, "/ingest", body=gzip.compress(body), connections=sat_c,
                                          duration=plan.saturation_s, headers={"Content-Encoding": "gzip"}),
        }
        api_auth = None
        try:
            key = create_write_key(ns)
            api_auth = api_service(ns, role="api1-auth", WOTR_REQUIRE_WRITE_KEY="true").start()
            variants["auth"] = lambda: hops.saturate(wrk_path, api_auth, "/ingest", body=body, connections=sat_c,
                                                     duration=plan.saturation_s, headers={"X-Write-Key": key})
        except Exception as e:
            errors.append(f"write-key API: {type(e).__name__}: {e}"[:2000])
            say(f"  write-key API FAILED: {e!r}"[:300])
        api_memory = None
        try:  # the ceiling of the interpreter's own work: the same API with in-memory adapters (no I/O)
            api_memory = api_service(ns, role="api1-memory", WOTR_PROFILE="memory").start()
            variants["memory"] = lambda: hops.saturate(wrk_path, api_memory, "/ingest", body=body,
                                                       connections=sat_c, duration=plan.saturation_s)
        except Exception as e:
            errors.append(f"memory-profile API: {type(e).__name__}: {e}"[:2000])
            say(f"  memory-profile API FAILED: {e!r}"[:300])
        try:
            sat = phase("saturation variants", hops.interleave, variants, reps, eps, "events/s") or {}
        finally:
            for extra_api in (api_auth, api_memory):
                if extra_api is not None:
                    extra_api.stop()
        ceil["wotr_memory"] = sat.get("memory") if "memory" in variants else {
            "failure": "the memory-profile API did not start"}
        hop[f"ingest_sat_c{sat_c}"] = sat.get("plain")
        hop["ingest_gzip"] = sat.get("gzip")
        hop["ingest_auth"] = sat.get("auth") if "auth" in variants else {"failure": "the write-key API did not start"}
        if hop["ingest_gzip"]:
            hop["ingest_gzip"]["body_bytes"], hop["ingest_gzip"]["gzip_bytes"] = len(body), len(gzip.compress(body))
        for c in plan.connections[1:]:
            hop[f"ingest_sat_c{c}"] = phase(f"ingest saturation, {c} connections", hops.saturate, wrk_path, api,
                                            "/ingest", body=body, connections=c, duration=plan.saturation_s)
        plain = hop.get(f"ingest_sat_c{sat_c}") or {}
        sustainable = plain.get("reps", {}).get("median")

        rate = min(plan.rate, 0.8 * sustainable) if sustainable else plan.rate / 2
        say(f"API memory over a sustained run: {rate:,.0f}/s for {plan.sustained_s:g}s")
        hop["sustained"] = phase("sustained run (RSS)", hops.sustained_rss, api, rate=rate, duration=plan.sustained_s)

        for size in plan.batch_sizes:
            n = reps if size == plan.batch_sizes[-1] else 1
            hop[f"batch_{size}"] = reps_of(f"batch ingest, {size} per request", lambda: hops.saturate(
                wrk_path, api, "/ingest/batch", body=batch_body(size), connections=plan.batch_connections,
                duration=plan.saturation_s, per_request=size), eps, "events/s", n=n)

        if sustainable:
            over_api = api
            if args.ingest_queue_max:
                over_api = api_service(ns, role="api1-queue", WOTR_INGEST_QUEUE_MAX=str(args.ingest_queue_max)).start()
            try:
                for f in plan.overload_factors:
                    say(f"overload: {f:g}x the saturation ({f * sustainable:,.0f}/s offered), WOTR_INGEST_QUEUE_MAX="
                        f"{queue_max}, {reps}x")
                    hop[f"overload_{f:g}"] = reps_of(f"overload {f:g}x", lambda: hops.overload(
                        over_api, rate=f * sustainable, duration=plan.overload_s,
                        connections=plan.overload_connections), _p99, "accepted p99 ms")
                    if hop[f"overload_{f:g}"]:
                        hop[f"overload_{f:g}"].update(factor=f, sustainable=sustainable, queue_max=queue_max)
            finally:
                if over_api is not api:
                    over_api.stop()
        else:
            errors.append("overload: skipped, no POST /ingest saturation figure to scale from")

        if args.profile:
            say("profiling the API under saturation (py-spy)")
            results["profiles"]["api_single"] = _profiled(api.pid, ns.workdir / "api-single.folded", plan.profile_s,
                                                          lambda: hops.saturate(wrk_path, api, "/ingest", body=body,
                                                                                connections=sat_c,
                                                                                duration=plan.profile_s))
            b = plan.batch_sizes[-1]
            results["profiles"]["api_batch"] = _profiled(api.pid, ns.workdir / "api-batch.folded", plan.profile_s,
                                                         lambda: hops.saturate(wrk_path, api, "/ingest/batch",
                                                                               body=batch_body(b),
                                                                               connections=plan.batch_connections,
                                                                               duration=plan.profile_s, per_request=b))
    finally:
        api.stop()


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


def _failures(value, name: str) -> list[str]:
    """What failed inside a phase's result: a variant or repetition that failed."""
    out: list[str] = []
    if isinstance(value, dict):
        if isinstance(value.get("failure"), str):
            out.append(f"{name}: {value['failure']}")
        if isinstance(value.get("reps"), dict):
            out += [f"{name}: {f}" for f in value["reps"].get("failed", [])]
        for key, sub in value.items():
            if key != "reps" and isinstance(sub, dict) and ("failure" in sub or "reps" in sub):
                out += _failures(sub, f"{name} ({key})")
    return out


def _headline(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return "; ".join(_headline(v) for v in value)
    if not isinstance(value, dict):
        return str(value)
    if "failure" in value:
        return f"FAILED: {value['failure'][:200]}"
    if "reps" in value and value["reps"]["n"] > 1:
        rp = value["reps"]
        rest = {k: v for k, v in value.items() if k != "reps"}
        return (f"median of {rp['n']} {rp['metric']} {rp['median']:,.1f} (min {rp['min']:,.1f}, max {rp['max']:,.1f}); "
                f"median run: {_headline(rest)}")
    if value and all(isinstance(v, dict) for v in value.values()) and not any(
            k in value for k in ("cpu", "latency_ms", "by_size", "saturation")):
        return "; ".join(f"{k}: {_headline(v)}" for k, v in value.items())
    if "by_size" in value:
        return "; ".join(f"{s:,}: " + (f"{e['rows_per_s']:,.0f} rows/s" if e.get("rows_per_s") else "not finished")
                         for s, e in value["by_size"].items())
    if "saturation" in value and "low_rate" in value:
        sat, low = value["saturation"], value["low_rate"]
        return (f"wrk {sat['wrk_requests_per_s']:,.0f}/s, open loop {sat['openloop_answered_per_s']:,.0f}/s answered "
                f"of {sat['openloop_offered']:,.0f}/s; p50 wrk -c1 {low['wrk_c1_latency_ms']['p50']:.2f} ms, open loop "
                f"{low['openloop_latency_ms'].get('p50', float('nan')):.2f} ms")
    if "rss_flat" in value:
        return (f"RSS {value['rss_first_mib']:,.0f} -> {value['rss_last_mib']:,.0f} MiB (max {value['rss_max_mib']:,.0f}), "
                f"{'flat' if value['rss_flat'] else 'NOT flat'}; {value['ok']}/{value['requests']} ok")
    if "processes" in value and "rows_per_process" in value:
        return (f"{value['rows_per_s']:,.0f} rows/s with {value['processes']} process(es) "
                f"(split {', '.join(f'{x:,.0f}' for x in value['rows_per_process'])})")
    if "refused_share" in value:
        l, f = value["latency_ms"], value["refused_ms"]
        return (f"{value['accepted_share']:.0%} accepted (p99 {l.get('p99', float('nan')):,.0f} ms), "
                f"{value['refused_share']:.0%} refused (p99 {f.get('p99', float('nan')):,.1f} ms), "
                f"other errors {sum(v for k, v in value['errors'].items() if k != '503')}")
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
    if "events_per_s" in value and value.get("url", "").endswith("/health"):
        return (f"{value['requests_per_s']:,.0f} requests/s (errors {value['errors']}, server "
                f"{value['cpu'].get('server_cores', 0):.2f} cores, wrk {value['generator_cpu_cores']:.2f} cores)")
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
