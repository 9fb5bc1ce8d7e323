"""The hops of the pipeline, measured one by one on the local profile."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from . import load
from .common import PY, REPO, CpuWindow, Service, consumer_service, metric_sum, say, tree_cpu, wait_until


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
             per_request: int = 1) -> dict:
    """wrk against the API for `duration`; events/s = answered requests/s x events per request."""
    url = f"http://127.0.0.1:{api.port}{path}"
    mark = _log_mark(api)
    with CpuWindow(server=api.pid) as cpu:
        r = load.wrk(wrk, url, api.ns.workdir, body=body, connections=connections, duration=duration)
    r["events_per_s"] = r["requests_per_s"] * per_request
    r["events_per_request"] = per_request
    r["cpu"] = cpu.result
    r["generator_cpu_cores"] = cpu.result["load_generator_cores"]
    r["server_cpu_us_per_event"] = cpu.result["server_cores"] / max(r["events_per_s"], 1e-9) * 1e6
    r["server_log"] = _log_trouble(api, mark)
    r["settle_s"] = settle(api)
    return r


def fixed_rate(api: Service, *, rate: float, duration: float, watch: dict[str, int] | None = None,
               keep_ids: bool = False) -> dict:
    url = f"http://127.0.0.1:{api.port}/ingest"
    mark = _log_mark(api)
    with CpuWindow(server=api.pid, **(watch or {})) as cpu:
        r = load.openloop(url, api.ns.workdir, rate=rate, duration=duration)
    r["cpu"] = cpu.result
    r["server_cpu_us_per_event"] = cpu.result["server_cores"] / max(r["achieved_rate"], 1e-9) * 1e6
    r["server_log"] = _log_trouble(api, mark)
    r["settle_s"] = settle(api)
    if not keep_ids:
        r.pop("ids", None)
    return r


# -- end to end: from the 202 to the row in ClickHouse ------------------------------------


def end_to_end(api: Service, *, rate: float, duration: float, drain_timeout: float = 90.0) -> dict:
    """Run `wotr consume` (its own engine directory) while the open-loop generator sends at
    `rate`; then stop the consumer and read each row's `loaded_at` (set by the engine at
    insert) back from its engine. Latency = loaded_at - wall-clock time of the 202."""
    ns = api.ns
    consumer = consumer_service(ns).start()
    try:
        say(f"  consumer up (pid {consumer.pid}); sending {rate:g}/s for {duration:g}s")
        r = fixed_rate(api, rate=rate, duration=duration, watch={"consumer": consumer.pid}, keep_ids=True)
        accepted = r["ok"]
        t0 = time.monotonic()
        wait_until(lambda: metric_sum(consumer.port, "wotr_sink_rows_total") >= accepted, drain_timeout,
                   f"the consumer to load {accepted} rows", interval=0.5)
        r["drain_after_load_s"] = time.monotonic() - t0
    finally:
        consumer.stop()
    rows = _read_engine(ns.workdir / "ch-consume", ns.workdir / "e2e-rows.tsv")
    sent = {i: t for i, t in r.pop("ids")}
    e2e, load_ms = [], []
    for row_id, created_us, loaded_us in rows:
        if row_id in sent:
            e2e.append((loaded_us / 1e6 - sent[row_id]) * 1000)
            load_ms.append((loaded_us - created_us) / 1000)
    from .openloop import percentiles

    r["rows_matched"] = len(e2e)
    r["e2e_ms"] = percentiles(e2e)
    r["loaded_minus_created_ms"] = percentiles(load_ms)
    return r


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


# -- ETL ---------------------------------------------------------------------------------


def etl(events: int, *, runs: int = 2, timeout: float = 300) -> dict:
    if not (REPO / "src" / "wotr_apps" / "etl" / "bench.py").exists():
        return {"skipped": "src/wotr_apps/etl/bench.py is absent"}
    cmd = [PY, "-m", "wotr_apps.etl.bench", "--events", str(events), "--runs", str(runs)]
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"skipped": f"the ETL benchmark did not finish within {timeout:g}s"}
    text = out.stdout + out.stderr
    found = re.findall(r"run (\d+): ([\d,]+) objects read.*?in ([\d.]+)s -> ([\d,]+) rows/s", text)
    if out.returncode != 0 or not found:
        return {"skipped": f"the ETL benchmark failed ({out.returncode}): {text[-800:]}"}
    runs_out = [{"run": int(n), "rows": int(r.replace(",", "")), "seconds": float(s), "rows_per_s": float(v.replace(",", ""))}
                for n, r, s, v in found]
    spark = re.search(r"Spark started in ([\d.]+)s", text)
    return {"events": events, "runs": runs_out, "rows_per_s": runs_out[-1]["rows_per_s"],
            "spark_start_s": float(spark.group(1)) if spark else None, "wall_s": time.monotonic() - t0,
            "output": text[-1500:]}
