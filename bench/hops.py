"""The hops of the pipeline, measured one by one on the local profile."""

from __future__ import annotations

import json
import queue
import statistics
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from . import load
from .common import (PY, REPO, CpuWindow, Namespace, Service, consumer_service, metric_sum, rss_tree, say, tree_cpu,
                     tree_rss_mib, wait_until)


# -- repetitions -------------------------------------------------------------------------


def _slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("raw", "ids", "runs")}


def summarize_reps(runs: list[dict], metric: Callable[[dict], float], failures: list[str] | None = None,
                   name: str = "") -> dict:
    """The run whose `metric` is the median (the lower middle for an even count), with the
    spread of every run: `reps` = {n, values, median, min, max, failed}; `runs` = all runs."""
    if not runs:
        raise RuntimeError(f"every repetition failed: {'; '.join(failures or [])[:800]}")
    values = [float(metric(r)) for r in runs]
    order = sorted(range(len(runs)), key=lambda k: values[k])
    out = dict(runs[order[(len(runs) - 1) // 2]])
    out["reps"] = {"n": len(runs), "metric": name, "values": values, "median": statistics.median(values),
                   "min": min(values), "max": max(values), "failed": failures or []}
    out["runs"] = [_slim(r) for r in runs]
    return out


def repeat(fn: Callable[[], dict], reps: int, metric: Callable[[dict], float], name: str = "") -> dict:
    """`fn` `reps` times; a failing repetition is noted and the others count."""
    return interleave({"only": fn}, reps, metric, name)["only"]


def interleave(fns: dict[str, Callable[[], dict]], reps: int, metric: Callable[[dict], float],
               name: str = "") -> dict[str, dict]:
    """Variants measured in turn (a, b, c, a, b, c, ...), so that a drift of the shared
    machine falls on all of them alike; the median run of each, with its spread."""
    runs: dict[str, list[dict]] = {k: [] for k in fns}
    failures: dict[str, list[str]] = {k: [] for k in fns}
    for i in range(reps):
        for key, fn in fns.items():
            try:
                runs[key].append(fn())
            except Exception as e:
                failures[key].append(f"rep {i + 1}: {type(e).__name__}: {e}"[:500])
                say(f"    {key} rep {i + 1} failed: {e!r}"[:300])
    out = {}
    for key in fns:
        try:
            out[key] = summarize_reps(runs[key], metric, failures[key], name)
        except RuntimeError as e:
            out[key] = {"failure": str(e)}
    return out


def settle(api: Service, *, idle_cores: float = 0.1, window: float = 1.0, timeout: float = 60.0) -> float:
    """Wait until the server is idle again (an overloaded run leaves requests queued in it
    after the client gave up), so the next phase does not inherit its backlog; returns
    the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and api.alive():
        c0 = tree_cpu(api.pid)
        time.sleep(window)
        if (tree_cpu(api.pid) - c0) / window < idle_cores:
            break
    return time.monotonic() - t0

# -- HTTP ingest -------------------------------------------------------------------------


def _log_mark(api: Service) -> int:
    return api.log_path.stat().st_size if api.log_path.exists() else 0


def _log_trouble(api: Service, mark: int) -> dict:
    """What the server logged as dependency trouble since `mark` (e.g. a service that
    someone else's test stopped refuses connections: those requests get 503)."""
    try:
        with open(api.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    refused = [l for l in text.splitlines() if "Connection refused" in l or "Errno 111" in l]
    warnings = [l for l in text.splitlines() if " WARNING " in l or " ERROR " in l or l.startswith(("WARNING", "ERROR"))]
    pool_full = sum(1 for l in warnings if "Connection pool is full" in l)
    out = {"refused": len(refused), "warnings": len(warnings), "pool_full_warnings": pool_full}
    other = [l for l in warnings if "Connection pool is full" not in l]
    if other:
        out["sample"] = other[0][:300]
    return out


def saturate(wrk: str, api: Service, path: str, *, body: bytes = b"", connections: int, duration: float,
             per_request: int = 1, headers: dict[str, str] | None = None, threads: int = 1) -> dict:
    """wrk against the API for `duration`; events/s = answered requests/s x events per request."""
    url = f"http://127.0.0.1:{api.port}{path}"
    mark = _log_mark(api)
    with CpuWindow(server=api.pid) as cpu:
        r = load.wrk(wrk, url, api.ns.workdir, body=body, connections=connections, duration=duration, headers=headers,
                     threads=threads)
    r["events_per_s"] = r["requests_per_s"] * per_request
    r["events_per_request"] = per_request
    r["url"] = url
    r["cpu"] = cpu.result
    r["generator_cpu_cores"] = cpu.result["load_generator_cores"]
    r["server_cpu_us_per_event"] = cpu.result["server_cores"] / max(r["events_per_s"], 1e-9) * 1e6
    r["server_log"] = _log_trouble(api, mark)
    r["headers"] = sorted(headers or {})
    r["settle_s"] = settle(api)
    return r


def fixed_rate(api: Service, *, rate: float, duration: float, watch: dict[str, int] | None = None,
               keep_ids: bool = False, path: str = "/ingest", method: str = "POST", connections: int = 256,
               timeout: float = 10.0, settle_timeout: float = 60.0) -> dict:
    url = f"http://127.0.0.1:{api.port}{path}"
    mark = _log_mark(api)
    with CpuWindow(server=api.pid, **(watch or {})) as cpu:
        r = load.openloop(url, api.ns.workdir, rate=rate, duration=duration, method=method, connections=connections,
                          timeout=timeout)
    r["cpu"] = cpu.result
    r["server_cpu_us_per_event"] = cpu.result["server_cores"] / max(r["achieved_rate"], 1e-9) * 1e6
    r["server_log"] = _log_trouble(api, mark)
    r["settle_s"] = settle(api, timeout=settle_timeout)
    if not keep_ids:
        r.pop("ids", None)
    return r


# -- end to end: from the 202 to the row in ClickHouse ------------------------------------


def end_to_end(api: Service, *, rates: list[tuple[str, float]], duration: float, reps: int,
               drain_timeout: float = 90.0) -> dict[str, dict]:
    """One `wotr consume` (its own engine directory and SQL port) runs while the open-loop
    generator sends at each rate, `reps` times (rates in turn), after it holds the topic's
    partitions and loaded a few warm-up events (the fresh table's first insert); then, once it has loaded
    every accepted event (or `drain_timeout` passed), each row's `loaded_at` (set by the
    engine at insert) is read back through the consumer's SQL endpoint (from its engine
    after it stopped, if the endpoint does not answer). Latency = loaded_at - wall-clock
    time of the 202, per run. Returns {key: the median run by e2e p99, with its spread}."""
    ns = api.ns
    consumer = consumer_service(ns, role="consume-e2e").start()
    runs: dict[str, list[dict]] = {key: [] for key, _ in rates}
    failures: dict[str, list[str]] = {key: [] for key, _ in rates}
    rows: list[tuple[str, int, int]] | None = None
    try:
        say(f"  consumer up (pid {consumer.pid}, SQL port {consumer.sql_port}); waiting for its partitions")
        _wait_assigned(ns, ns.topic, ns.group, 1)
        warm = fixed_rate(api, rate=20, duration=1)  # the first insert into a fresh table, outside the figures
        wait_until(lambda: metric_sum(consumer.port, "wotr_sink_rows_total") >= warm["ok"], 60,
                   "the consumer to load the warm-up events", interval=0.2)
        for i in range(reps):
            for key, rate in rates:
                try:
                    r = fixed_rate(api, rate=rate, duration=duration, watch={"consumer": consumer.pid}, keep_ids=True)
                    r["rep"] = i + 1
                    runs[key].append(r)
                    say(f"    {key} rep {i + 1}: {r['ok']}/{r['requests']} accepted at {rate:g}/s, ingest p99 "
                        f"{r['latency_ms'].get('p99', float('nan')):.1f} ms")
                except Exception as e:
                    failures[key].append(f"rep {i + 1}: {type(e).__name__}: {e}"[:500])
        accepted = warm["ok"] + sum(r["ok"] for rs in runs.values() for r in rs)
        t0 = time.monotonic()
        try:
            wait_until(lambda: metric_sum(consumer.port, "wotr_sink_rows_total") >= accepted, drain_timeout,
                       f"the consumer to load {accepted} rows", interval=0.5)
        except TimeoutError as e:
            say(f"  {e}; reading what was loaded")
        drained = time.monotonic() - t0
        try:
            rows = _read_sql(consumer.sql_port, ns.workdir / "e2e-rows.tsv")
        except Exception as e:
            say(f"  the consumer's SQL endpoint did not answer ({e!r}); reading its engine after it stops")
    finally:
        consumer.stop()
    if rows is None:
        rows = _read_engine(ns.workdir / "ch-consume-e2e", ns.workdir / "e2e-rows.tsv")
    loaded = {row_id: (created_us, loaded_us) for row_id, created_us, loaded_us in rows}
    from .openloop import percentiles

    out = {}
    for key, _ in rates:
        for r in runs[key]:
            e2e, load_ms, due_ms = [], [], []
            for row_id, t_202, waited in r.pop("ids"):
                got = loaded.get(row_id)
                if got is not None:
                    e2e.append((got[1] / 1e6 - t_202) * 1000)
                    due_ms.append((got[1] / 1e6 - (t_202 - waited)) * 1000)  # from when the request was due
                    load_ms.append((got[1] - got[0]) / 1000)
            r["rows_matched"] = len(e2e)
            r["e2e_ms"] = percentiles(e2e)
            r["due_to_row_ms"] = percentiles(due_ms)
            r["loaded_minus_created_ms"] = percentiles(load_ms)
            r["drain_after_load_s"] = drained
            r["consumer_peak_rss"] = consumer.peak_rss
        try:
            out[key] = summarize_reps(runs[key], lambda r: r["e2e_ms"].get("p99", float("inf")), failures[key],
                                      "e2e p99 ms")
        except RuntimeError as e:
            out[key] = {"failure": str(e)}
    return out


def _read_sql(port: int | None, out: Path) -> list[tuple[str, int, int]]:
    """(id, created_at us, first loaded_at us) of every row, through the consumer's
    read-only SQL endpoint (ClickHouse HTTP interface)."""
    import httpx

    if not port:
        raise RuntimeError("no SQL port")
    query = ("SELECT id, toUnixTimestamp64Micro(min(created_at)), toUnixTimestamp64Micro(min(loaded_at)) "
             "FROM wotr.ingested_data GROUP BY id FORMAT TabSeparated")
    resp = httpx.post(f"http://127.0.0.1:{port}/", content=query.encode(), timeout=120)
    resp.raise_for_status()
    out.write_bytes(resp.content)
    rows = []
    for line in resp.text.splitlines():
        a, b, d = line.split("\t")
        rows.append((a, int(b), int(d)))
    return rows


def _read_engine(path: Path, out: Path) -> list[tuple[str, int, int]]:
    """(id, created_at us, first loaded_at us) of every row, read in a child process (the
    engine is one per process, and this process has its own)."""
    code = (
        "import sys, clickhouse_connect;"
        f"c = clickhouse_connect.get_client(dsn={f'chdb://{path}'!r});"
        "r = c.query('SELECT id, toUnixTimestamp64Micro(min(created_at)), toUnixTimestamp64Micro(min(loaded_at)) "
        "FROM wotr.ingested_data GROUP BY id');"
        f"open({str(out)!r}, 'w').write(''.join(f'{{a}}\\t{{b}}\\t{{d}}\\n' for a, b, d in r.result_rows))"
    )
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"reading the consumer's engine failed: {done.stderr[-2000:]}")
    rows = []
    for line in out.read_text().splitlines():
        a, b, d = line.split("\t")
        rows.append((a, int(b), int(d)))
    return rows


# -- consumer: Kafka -> ClickHouse, in this process ---------------------------------------


class _TimedSubscription:
    """The adapter's subscription, noting when the first non-empty poll began."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.first_poll_started: float | None = None

    def poll(self, max_messages: int, timeout: float):
        started = time.monotonic()
        out = self._inner.poll(max_messages, timeout)
        if out and self.first_poll_started is None:
            self.first_poll_started = started
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Counting:
    """A LoaderObserver that counts rows and batches and forwards to wotr's telemetry."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.rows = 0
        self.batches = 0
        self.last = 0.0

    def batch(self, size: int) -> None:
        self._inner.batch(size)
        if size:
            self.batches += 1

    def loaded(self, rows: int) -> None:
        self._inner.loaded(rows)
        self.rows += rows
        self.last = time.monotonic()

    def dead_lettered(self, messages: int) -> None:
        self._inner.dead_lettered(messages)


def consumer_drain(bus: Any, sink: Any, group: str, *, target: int, batch_size: int, batch_seconds: float,
                   seconds: float) -> dict:
    """`run_consumer` (the loop of `wotr consume`) over a pre-filled topic, until `target`
    rows are loaded or `seconds` pass; rows/s from the first poll that returned data."""
    from wotr_apps.telemetry import Telemetry
    from wotr_apps.workers import run_consumer
    from wotr_domain.services import AnalyticsLoader

    telemetry = Telemetry("bench-consumer")
    counter = _Counting(telemetry.loader)
    subscription = _TimedSubscription(bus.subscribe(group))
    loader = AnalyticsLoader(subscription, sink, observer=counter)
    stop = threading.Event()
    worker = threading.Thread(target=run_consumer, args=(loader, stop),
                              kwargs={"batch_size": batch_size, "batch_seconds": batch_seconds}, daemon=True)
    with CpuWindow() as cpu:
        worker.start()
        deadline = time.monotonic() + seconds + 30  # + group join
        while time.monotonic() < deadline and counter.rows < target:
            if subscription.first_poll_started is not None and time.monotonic() - subscription.first_poll_started > seconds:
                break
            time.sleep(0.05)
        stop.set()
        worker.join(30)
    telemetry.shutdown()
    start = subscription.first_poll_started or time.monotonic()
    elapsed = max(counter.last - start, 1e-9)
    return {"rows": counter.rows, "batches": counter.batches, "seconds": elapsed, "rows_per_s": counter.rows / elapsed,
            "batch_size": batch_size, "batch_seconds": batch_seconds, "cpu": cpu.result,
            "complete": counter.rows >= target}


# -- the production edge: overload, memory over a sustained run ---------------------------


def overload(api: Service, *, rate: float, duration: float, connections: int, timeout: float = 10.0) -> dict:
    """The open-loop generator at `rate` (above what the API sustains) with enough
    connections that the API's own bound (WOTR_INGEST_QUEUE_MAX, plus the events being
    flushed) is what refuses the excess, not the generator's pool: accepted and refused
    (503) answers timed apart. Waits (up to 90 s) for the API to work off its backlog."""
    r = fixed_rate(api, rate=rate, duration=duration, connections=connections, timeout=timeout, settle_timeout=90)
    r["accepted_share"] = r["ok"] / max(r["requests"], 1)
    r["refused_share"] = r["refused"] / max(r["requests"], 1)
    return r


def sustained_rss(api: Service, *, rate: float, duration: float, interval: float = 1.0) -> dict:
    """The open-loop generator at `rate` for `duration` while the API's resident memory
    (its whole process tree) is sampled every `interval` seconds."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, tree_rss_mib(api.pid)))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = fixed_rate(api, rate=rate, duration=duration, settle_timeout=30)
    finally:
        stop.set()
        sampler.join(5)
    values = [v for _, v in samples]
    first, last = values[0], values[-1]
    r["rss_samples"] = [(round(t, 1), round(v, 1)) for t, v in samples]
    r["rss_first_mib"], r["rss_last_mib"] = first, last
    r["rss_min_mib"], r["rss_max_mib"] = min(values), max(values)
    r["rss_growth"] = (last - first) / first
    r["rss_max_over_first"] = max(values) / first
    r["rss_flat"] = abs(r["rss_growth"]) <= 0.10 and r["rss_max_over_first"] <= 1.10
    return r


# -- the load generator against wrk on one hop -------------------------------------------


def generator_check(wrk_path: str, svc: Service, *, wrk_saturation: dict, low_rate: float, duration: float) -> dict:
    """`bench.openloop` beside wrk on the bare framework's POST /ingest: (1) saturation: the
    open-loop generator offered 1.5x what wrk measured; what it gets answered should come
    close to wrk's figure if the generator is not the bound; (2) latency at a low load:
    wrk with one connection (closed loop: each request alone on the server) against the
    open-loop generator at `low_rate`/s (each request alone too); p50/p99 should agree
    within the generator's own overhead."""
    from .load import event_body

    wrk_rps = wrk_saturation.get("reps", {}).get("median") or wrk_saturation["requests_per_s"]
    offered = 1.5 * wrk_rps
    ol_sat = fixed_rate(svc, rate=offered, duration=duration, timeout=30, settle_timeout=60)
    wrk_one = saturate(wrk_path, svc, "/ingest", body=event_body(), connections=1, duration=duration)
    ol_low = fixed_rate(svc, rate=low_rate, duration=duration)
    return {
        "hop": "bare framework POST /ingest",
        "saturation": {"wrk_requests_per_s": wrk_rps, "wrk_connections": wrk_saturation["connections"],
                       "wrk_cores": wrk_saturation["generator_cpu_cores"],
                       "openloop_offered": offered, "openloop_answered_per_s": ol_sat["achieved_rate"],
                       "openloop_cores": ol_sat["generator_cpu_cores"], "openloop_errors": ol_sat["errors"],
                       "ratio": ol_sat["achieved_rate"] / max(wrk_rps, 1e-9)},
        "low_rate": {"wrk_c1_latency_ms": wrk_one["latency_ms"], "wrk_c1_requests_per_s": wrk_one["requests_per_s"],
                     "openloop_rate": low_rate, "openloop_latency_ms": ol_low["latency_ms"],
                     "openloop_service_ms": ol_low["service_ms"], "openloop_errors": ol_low["errors"]},
        "runs": {"openloop_saturation": _slim(ol_sat), "wrk_c1": _slim(wrk_one), "openloop_low": _slim(ol_low)},
    }


# -- consumer processes in one group --------------------------------------------------------


def _group_stable(admin: Any, group: str, members: int, partitions: int) -> bool:
    try:
        d = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    except Exception:
        return False
    assigned = sum(len(m.assignment.topic_partitions) for m in d.members if m.assignment is not None)
    return len(d.members) == members and assigned == partitions and str(d.state).upper().endswith("STABLE")


def _wait_assigned(ns: Namespace, topic: str, group: str, members: int, timeout: float = 90) -> None:
    """Until `group` is stable with `members` members holding every partition of `topic`."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": ns.stack["KAFKA_BOOTSTRAP"]})

    def partitions() -> int:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        return len(meta.partitions) if meta is not None and meta.error is None else 0

    count = wait_until(partitions, 30, f"topic {topic}", interval=0.3)
    wait_until(lambda: _group_stable(admin, group, members, count), timeout,
               f"group {group} to be stable with {members} member(s)", interval=0.3)


def consumer_processes(ns: Namespace, n: int, messages: list, *, partitions: int, reps: int,
                       timeout: float = 120.0) -> dict:
    """`n` `wotr consume` processes in one group on a topic of their own (`partitions`
    partitions), each with its own engine directory, metrics port and WOTR_SQL_PORT.
    Once the group is stable (every member holds partitions), `messages` are produced as
    fast as the broker takes them, `reps` times; rows/s = the rows the processes load
    from the moment every one of them has loaded rows until all are in (their
    `wotr_sink_rows_total`, polled every 0.05 s): the aggregate rate while all of them
    work. The producer (in this process) overlaps the first part of each window. When too
    few rows are left by then (a small topic), rows/s counts from the start of producing."""
    from wotr_adapters.kafka import KafkaEventBus

    from .ceilings import kafka_produce

    bootstrap = ns.stack["KAFKA_BOOTSTRAP"]
    topic = f"{ns.name}-scale{n}"
    group = f"{topic}-group"
    bus = KafkaEventBus(bootstrap, topic, partitions=partitions)
    bus.start()
    consumers = [consumer_service(ns, role=f"consume-scale{n}-p{k}", KAFKA_TOPIC=topic, KAFKA_GROUP=group,
                                  KAFKA_PARTITIONS=str(partitions)) for k in range(n)]
    runs: list[dict] = []
    failures: list[str] = []
    try:
        for c in consumers:
            c.launch()
        for c in consumers:
            c.wait_ready(180)
        _wait_assigned(ns, topic, group, n)
        # Warm-up outside the figures: every process's first insert into its fresh table.
        warm = messages[: max(100 * partitions, 1)]
        kafka_produce(bus, warm)
        wait_until(lambda: all(metric_sum(c.port, "wotr_sink_rows_total") > 0 for c in consumers)
                   and sum(metric_sum(c.port, "wotr_sink_rows_total") for c in consumers) >= len(warm), 60,
                   "the consumers to load the warm-up messages", interval=0.2)
        base = [metric_sum(c.port, "wotr_sink_rows_total") for c in consumers]
        for rep in range(reps):
            target = len(messages)
            samples: list[tuple[float, list[float]]] = []
            produced: dict = {}
            producer = threading.Thread(target=lambda: produced.update(kafka_produce(bus, messages)), daemon=True)
            watch = {f"consumer{k}": c.pid for k, c in enumerate(consumers)}
            with CpuWindow(**watch) as cpu:
                t0 = time.monotonic()
                producer.start()
                while time.monotonic() - t0 < timeout:
                    rows = [metric_sum(c.port, "wotr_sink_rows_total") - base[k] for k, c in enumerate(consumers)]
                    samples.append((time.monotonic() - t0, rows))
                    if sum(rows) >= target:
                        break
                    time.sleep(0.05)
                producer.join(60)
            base = [base[k] + samples[-1][1][k] for k in range(n)]
            total = sum(samples[-1][1])
            t_first = next((t for t, r in samples if sum(r) > 0), None)
            t_all = next((t for t, r in samples if all(x > 0 for x in r)), None)
            t_end = samples[-1][0]
            at_all = next((sum(r) for t, r in samples if t == t_all), 0.0)
            run = {"processes": n, "partitions": partitions, "events": target, "rows": total,
                   "complete": total >= target, "first_row_s": t_first, "all_loading_s": t_all, "end_s": t_end,
                   "produce_s": produced.get("seconds"), "rows_per_process": samples[-1][1],
                   "cpu": cpu.result, "rep": rep + 1}
            if t_first is not None and t_end > t_first:
                run["rows_per_s_from_first_row"] = total / (t_end - t_first)
            run["rows_per_s_from_produce"] = total / t_end
            if t_all is not None and t_end - t_all >= 0.3 and total - at_all >= 0.2 * total:
                run["rows_per_s"], run["window"] = (total - at_all) / (t_end - t_all), "all processes loading"
                run["window_rows"] = total - at_all
            else:  # too few rows left once every process loads (a small topic): from the start of producing
                run["rows_per_s"], run["window"] = run["rows_per_s_from_produce"], "from the start of producing"
            if not run["complete"]:
                failures.append(f"rep {rep + 1}: {total:,.0f} of {target:,} rows in {timeout:g}s")
            runs.append(run)
            say(f"    {n} consumer process(es), rep {rep + 1}: {run['rows_per_s']:,.0f} rows/s "
                f"(split {', '.join(f'{x:,.0f}' for x in run['rows_per_process'])})")
    finally:
        for c in consumers:
            c.stop()
        bus.close()
    good = [r for r in runs if r["complete"]]
    out = summarize_reps(good or runs, lambda r: r["rows_per_s"], failures, "rows/s")
    out["peak_rss"] = [c.peak_rss for c in consumers]
    return out


# -- ETL at growing archive sizes ---------------------------------------------------------


def etl_sizes(sizes: list[int], *, runs: int, warmup: int, budgets: list[float], workdir: Path | None = None,
              per_object: int = 200, also: tuple[tuple[int, list[int], list[float]], ...] = ()) -> dict:
    """`bench.etl` in one child process per archive layout: the archive grows to each size
    and the ETL runs `runs` times at each. Size i must finish (generation and runs) within
    `budgets[i]` seconds of starting; past it, the process is stopped and what finished is
    kept (a size with some runs done counts with those). Its processes' peak RSS is
    sampled. The archive lives in `workdir` (removed by the harness with its work
    directory), one subdirectory per layout.

    The headline layout is `per_object` events per raw object (200: NDJSON objects as the
    group commit writes them under load; 1: one object per event); `also` lists further
    layouts, `(per_object, sizes, budgets)`, each measured after it in its own process
    (no warm-up run but the first size's) and returned in `out["also"]`."""

    def label(n: int) -> str:
        return "single" if n == 1 else f"ndjson-{n}"

    def one(per_object: int, sizes: list[int], budgets: list[float], runs: int, warmup: int,
            workdir: Path | None) -> dict:
        layout = label(per_object)
        cmd = [PY, "-m", "bench.etl", "--sizes", ",".join(map(str, sizes)), "--per-object", str(per_object),
               "--runs", str(runs), "--warmup", str(warmup), "--budgets", ",".join(f"{b:.0f}" for b in budgets)]
        if workdir is not None:  # a directory the harness removes, even when this process is killed at its bound
            cmd += ["--dir", str(workdir)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        err_tail: deque[str] = deque(maxlen=200)

        def pump(stream, sink) -> None:
            for line in stream:
                sink(line)
            if stream is proc.stdout:
                lines.put(None)

        threading.Thread(target=pump, args=(proc.stdout, lines.put), daemon=True).start()
        threading.Thread(target=pump, args=(proc.stderr, err_tail.append), daemon=True).start()
        peak: dict[int, dict] = {}
        by_size: dict[int, dict] = {s: {"size": s, "runs": [], "warmup": []} for s in sizes}
        out: dict = {"layout": layout, "per_object": per_object, "sizes": sizes, "runs_per_size": runs,
                     "warmup": warmup, "budgets_s": budgets, "by_size": by_size}
        t_start = time.monotonic()
        current = 0
        size_started = time.monotonic()
        stopped_for: int | None = None
        while True:
            for p in rss_tree(proc.pid) if proc.poll() is None else []:
                peak[p["pid"]] = p
            deadline = size_started + budgets[min(current, len(budgets) - 1)]
            try:
                line = lines.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())) or 0.01)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                if kind == "spark":
                    out["spark_start_s"] = ev["seconds"]
                    size_started = time.monotonic()  # Spark's start is not the first size's
                elif kind == "generated":
                    by_size[ev["size"]]["generate_s"] = ev["seconds"]
                elif kind in ("run", "warmup"):
                    by_size[ev["size"]]["runs" if kind == "run" else "warmup"].append(ev)
                    say(f"    ETL {ev['size']:,} events ({layout}), {kind}: {ev['rows_per_s']:,.0f} rows/s ({ev['seconds']:.1f}s)")
                elif kind == "skipped":
                    by_size[ev["size"]]["skipped_runs"] = ev["runs"]
                elif kind == "size_done":
                    by_size[ev["size"]]["complete"] = True
                    by_size[ev["size"]]["seconds"] = time.monotonic() - size_started
                    current += 1
                    size_started = time.monotonic()
            if proc.poll() is None and time.monotonic() > deadline and current < len(sizes):
                stopped_for = sizes[current]
                say(f"    ETL: {stopped_for:,} events ({layout}) did not finish within {budgets[min(current, len(budgets) - 1)]:g}s; "
                    "stopping it")
                import os
                import signal

                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
                except Exception:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
        out["wall_s"] = time.monotonic() - t_start
        out["stopped_at_size"] = stopped_for
        out["returncode"] = proc.returncode
        out["peak_rss"] = sorted(peak.values(), key=lambda p: -p["peak_mib"])
        if proc.returncode not in (0, None) and stopped_for is None:
            out["error"] = "".join(err_tail)[-1500:]
        for s, entry in by_size.items():
            if entry["runs"]:
                entry.update(summarize_reps(entry["runs"], lambda r: r["rows_per_s"], [], "rows/s"))
                entry["rows_per_s"] = entry["reps"]["median"]
        done = [s for s in sizes if by_size[s]["runs"]]
        out["largest_done"] = max(done) if done else None
        return out

    out = one(per_object, sizes, budgets, runs, warmup, None if workdir is None else workdir / label(per_object))
    out["also"] = []
    for n, more_sizes, more_budgets in also:
        try:
            out["also"].append(one(n, list(more_sizes), list(more_budgets), runs, warmup,
                                   None if workdir is None else workdir / label(n)))
        except Exception as e:  # the headline stands on its own
            out["also"].append({"layout": label(n), "per_object": n, "sizes": list(more_sizes),
                                "error": f"{type(e).__name__}: {e}"[:1500]})
    return out
