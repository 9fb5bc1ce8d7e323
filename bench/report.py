"""The report: every hop beside the ceiling that bounds it, as markdown, JSON and a chart."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

TARGETS = {
    "ingest_events_per_s": 2_000,
    "ingest_p99_ms": 50,
    "batch_events_per_s": 50_000,
    "consumer_rows_per_s": 100_000,
    "e2e_p99_ms": 2_000,
}


def _num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def _ceiling(results: dict, parts: list[tuple[str, float, str]]) -> tuple[float | None, str]:
    """The lowest of (ceiling key, operations per event, label): events/s and its description."""
    best: tuple[float, str] | None = None
    for key, per_event, label in parts:
        c = results["ceilings"].get(key)
        if not c:
            continue
        rate = c.get("value", c.get("requests_per_s"))
        if rate is None:
            continue
        per = rate / per_event
        text = f"{label} {_num(rate)}/s" + (f" ÷ {per_event:g}" if per_event != 1 else "") if per_event >= 1 \
            else f"{label} {_num(rate)}/s × {1 / per_event:g}"
        if best is None or per < best[0]:
            best = (per, text)
    return (best[0], best[1]) if best else (None, "not measured")


def _BATCH_PARTS(size: int) -> list[tuple[str, float, str]]:
    """A batch request: one HTTP request and one raw object (NDJSON) per batch; one metadata
    row (multi-row insert, counted against COPY) and one bus message per event."""
    return [("http", 1 / size, "Litestar /health"), ("s3_put", 1 / size, "S3 PUT"), ("pg_copy", 1, "PG COPY"),
            ("kafka_produce", 1, "Kafka produce")]


def _server_note(r: dict) -> str:
    """CPU per event and any dependency trouble the server logged during the phase."""
    parts = []
    if r.get("server_cpu_us_per_event") is not None:
        parts.append(f"{r['server_cpu_us_per_event']:,.0f} µs server CPU per event")
    log = r.get("server_log") or {}
    if log.get("refused"):
        parts.append(f"WARNING: {log['refused']} connection-refused lines in the server log (a service was down "
                     f"during this phase; its 503s are not the code's)")
    if log.get("pool_full_warnings"):
        parts.append(f"{log['pool_full_warnings']} urllib3 'connection pool is full' warnings")
    if log.get("sample"):
        parts.append(f"log: {log['sample'][:160]}")
    return "; ".join(parts)


def figures(results: dict) -> list[dict]:
    """Table rows: hop, figure, ceiling, fraction, target, status."""
    hops = results["hops"]
    rows: list[dict] = []

    def row(hop: str, figure: str, value: float | None, ceiling: tuple[float | None, str] | None,
            target: str, met: bool | None, note: str = "") -> None:
        c_value, c_text = ceiling if ceiling else (None, "—")
        fraction = value / c_value if value is not None and c_value else None
        rows.append({"hop": hop, "figure": figure, "value": value, "ceiling": c_text, "ceiling_value": c_value,
                     "fraction": fraction, "target": target,
                     "status": "—" if met is None else ("met" if met else "missed"), "note": note})

    # Single events go through the API's group commit: per event one HTTP request, one bus
    # message and one metadata row; the raw object and the statements are shared by a group.
    single_ceiling = _ceiling(results, [("http", 1, "Litestar /health"), ("kafka_produce", 1, "Kafka produce"),
                                        ("pg_copy", 1, "PG COPY")])
    sats = {k: v for k, v in hops.items() if k.startswith("ingest_sat_c") and v}
    if sats:
        key, best = max(sats.items(), key=lambda kv: kv[1]["events_per_s"])
        v = best["events_per_s"]
        row("POST /ingest, saturation (1 process)", f"{_num(v)} events/s ({best['connections']} connections)", v,
            single_ceiling, f">= {TARGETS['ingest_events_per_s']:,} events/s", v >= TARGETS["ingest_events_per_s"],
            f"errors {best['errors']}; server {best['cpu'].get('server_cores', 0):.2f} cores; "
            f"wrk {best['generator_cpu_cores']:.2f} cores; machine busy {best['cpu']['machine_busy_cores']:.2f} of "
            f"{results['machine']['cores']} cores; {_server_note(best)}")
    for key, label in (("ingest_fixed", "POST /ingest at {rate}/s offered (1 process)"),
                       ("e2e", "POST /ingest at {rate}/s, consumer running")):
        r = hops.get(key)
        if r and r.get("latency_ms"):
            lat = r["latency_ms"]
            ok_rate = r["achieved_rate"] >= 0.97 * r["offered_rate"] and not r["errors"]
            met = lat["p99"] <= TARGETS["ingest_p99_ms"] and ok_rate
            row(label.format(rate=_num(r["offered_rate"])),
                f"p50 {_num(lat['p50'], 1)} / p95 {_num(lat['p95'], 1)} / p99 {_num(lat['p99'], 1)} ms", lat["p99"], None,
                f"p99 <= {TARGETS['ingest_p99_ms']} ms", met if key == "ingest_fixed" else None,
                f"achieved {_num(r['achieved_rate'])}/s, errors {r['errors'] or 0}, generator "
                f"{r['generator_cpu_cores']:.2f} cores, server {r['cpu'].get('server_cores', 0):.2f} cores; {_server_note(r)}")
    for key in sorted((k for k in hops if k.startswith("batch_") and hops[k]), key=lambda k: int(k.split("_")[1])):
        r = hops[key]
        size = r["events_per_request"]
        c = _ceiling(results, _BATCH_PARTS(size))
        v = r["events_per_s"]
        row(f"POST /ingest/batch, {size} per request (1 process)", f"{_num(v)} events/s", v, c,
            f">= {TARGETS['batch_events_per_s']:,} events/s", v >= TARGETS["batch_events_per_s"],
            f"{_num(r['requests_per_s'], 1)} req/s, {r['connections']} connections, errors {r['errors']}, "
            f"server {r['cpu'].get('server_cores', 0):.2f} cores; {_server_note(r)}")
    inserts = [c for c in (results["ceilings"].get("clickhouse_insert"), results["ceilings"].get("clickhouse_insert_rows")) if c]
    if inserts:  # the engine's ceiling: the faster of the two ways of feeding it
        results["ceilings"]["clickhouse_best"] = max(inserts, key=lambda c: c["value"])
    consumer_ceiling = _ceiling(results, [("kafka_consume", 1, "Kafka consume"), ("clickhouse_best", 1, "ClickHouse insert")])
    for key, label, target in (("consumer", "consumer Kafka -> ClickHouse, batches of 5,000", True),
                               ("consumer_naive", "consumer, batches of 1 (per-message design)", False)):
        r = hops.get(key)
        if r:
            v = r["rows_per_s"]
            row(label, f"{_num(v)} events/s", v, consumer_ceiling,
                f">= {TARGETS['consumer_rows_per_s']:,} events/s" if target else "(comparison)",
                v >= TARGETS["consumer_rows_per_s"] if target else None,
                f"{r['rows']:,} rows in {r['seconds']:.1f}s, {r['batches']:,} batches; bench process "
                f"{r['cpu']['bench_process_cores']:.2f} cores" + ("" if r["complete"] or not target else "; time bound hit"))
    for key in ("e2e", "e2e_low"):
        r = hops.get(key)
        if not (r and r.get("e2e_ms")):
            continue
        e = r["e2e_ms"]
        overloaded = r["achieved_rate"] < 0.97 * r["offered_rate"] or sum(r["errors"].values()) > 0.01 * r["requests"]
        row(f"end to end, 202 -> row in ClickHouse, at {_num(r['offered_rate'])}/s offered",
            f"p50 {_num(e['p50'])} / p99 {_num(e['p99'])} ms", e["p99"], None,
            f"p99 <= {TARGETS['e2e_p99_ms']:,} ms" if key == "e2e" else "(at a rate the API sustains)",
            (e["p99"] <= TARGETS["e2e_p99_ms"] and r["rows_matched"] >= 0.99 * r["ok"] and not overloaded)
            if key == "e2e" else None,
            f"{r['rows_matched']:,} of {r['ok']:,} accepted rows found; API accepted {_num(r['achieved_rate'])}/s"
            + (" (overloaded: the 202 itself comes late, so a row can be loaded before its 202 arrives and the "
               "figure can be negative)" if overloaded else "")
            + f"; ingest latency p99 {_num(r['latency_ms'].get('p99'), 1)} ms; consumer "
            f"{r['cpu'].get('consumer_cores', 0):.2f} cores; engine loaded_at - created_at p50 "
            f"{_num(r['loaded_minus_created_ms'].get('p50'))} / p99 {_num(r['loaded_minus_created_ms'].get('p99'))} ms")
    for key in sorted(k for k in hops if k.startswith("w") and k.endswith("_sat") and hops[k]):
        r = hops[key]
        n = key[1:].split("_")[0]
        v = r["events_per_s"]
        workers_ceiling = single_ceiling
        if results["ceilings"].get(f"http_w{n}"):
            workers_ceiling = _ceiling(results, [(f"http_w{n}", 1, f"Litestar /health ({n} workers)"),
                                                 ("kafka_produce", 1, "Kafka produce"), ("pg_copy", 1, "PG COPY")])
        row(f"POST /ingest, saturation ({n} uvicorn workers)", f"{_num(v)} events/s ({r['connections']} connections)", v,
            workers_ceiling, f">= {TARGETS['ingest_events_per_s']:,} events/s", v >= TARGETS["ingest_events_per_s"],
            f"errors {r['errors']}; server {r['cpu'].get('server_cores', 0):.2f} cores; {_server_note(r)}")
        f = hops.get(f"w{n}_fixed")
        if f and f.get("latency_ms"):
            lat = f["latency_ms"]
            row(f"POST /ingest at {_num(f['offered_rate'])}/s offered ({n} uvicorn workers)",
                f"p50 {_num(lat['p50'], 1)} / p95 {_num(lat['p95'], 1)} / p99 {_num(lat['p99'], 1)} ms", lat["p99"], None,
                f"p99 <= {TARGETS['ingest_p99_ms']} ms",
                lat["p99"] <= TARGETS["ingest_p99_ms"] and f["achieved_rate"] >= 0.97 * f["offered_rate"] and not f["errors"],
                f"achieved {_num(f['achieved_rate'])}/s, errors {f['errors'] or 0}; {_server_note(f)}")
        b = hops.get(f"w{n}_batch")
        if b:
            size = b["events_per_request"]
            c = _ceiling(results, _BATCH_PARTS(size))
            row(f"POST /ingest/batch, {size} per request ({n} uvicorn workers)", f"{_num(b['events_per_s'])} events/s",
                b["events_per_s"], c, f">= {TARGETS['batch_events_per_s']:,} events/s",
                b["events_per_s"] >= TARGETS["batch_events_per_s"], f"errors {b['errors']}; {_server_note(b)}")
    r = hops.get("etl")
    if r:
        if "skipped" in r:
            row("ETL raw JSON -> curated Parquet (Spark local[2])", "skipped", None, None, "(none)", None, r["skipped"][:200])
        else:
            row("ETL raw JSON -> curated Parquet (Spark local[2])", f"{_num(r['rows_per_s'])} rows/s", r["rows_per_s"],
                None, "(none)", None, f"{r['events']:,} events, last of {len(r['runs'])} runs; Spark start "
                f"{_num(r.get('spark_start_s'), 1)} s")
    return rows


def _ceiling_rows(results: dict) -> list[dict]:
    names = {"http": "Litestar GET /health", "s3_put": "S3 PUT (minio SDK, as wotr puts)",
             "s3_put_server": "S3 PUT, server only (wrk, presigned)", "pg_insert": "PostgreSQL INSERT, 1 row per transaction",
             "pg_copy": "PostgreSQL COPY", "kafka_produce": "Kafka produce", "kafka_consume": "Kafka consume",
             "clickhouse_insert": "ClickHouse insert, 5,000-row batches, columns + int timestamps",
             "clickhouse_insert_rows": "ClickHouse insert, 5,000-row batches, rows of datetimes (as the sink)"}
    out = []
    for key in sorted(k for k in results["ceilings"] if k.startswith("http_w")):
        names[key] = f"Litestar GET /health, {key[len('http_w'):]} uvicorn workers"
    for key, name in names.items():
        c = results["ceilings"].get(key)
        if not c:
            out.append({"key": key, "ceiling": name, "value": None, "unit": "", "how": "not measured", "cpu": ""})
            continue
        if key.startswith("http"):
            out.append({"key": key, "ceiling": name, "value": c["requests_per_s"], "unit": "requests/s",
                        "how": f"wrk, {c['connections']} connections, {c['duration_s']:.0f} s; p99 "
                               f"{c['latency_ms']['p99']:.1f} ms (closed loop)",
                        "cpu": f"server {c['cpu'].get('server_cores', 0):.2f}, wrk {c['generator_cpu_cores']:.2f}, "
                               f"machine {c['cpu']['machine_busy_cores']:.2f}"})
        else:
            out.append({"key": key, "ceiling": name, "value": c["value"], "unit": c["unit"], "how": c["how"],
                        "cpu": f"client {c['cpu']['bench_process_cores'] + c['cpu']['load_generator_cores']:.2f}, "
                               f"machine {c['cpu']['machine_busy_cores']:.2f}"})
    return out


def _quiet_text(quiet: dict) -> str:
    if quiet.get("quiet") is None:
        return "The harness did not wait for a quiet machine (`--wait-quiet`)."
    if quiet["quiet"]:
        return "It waited for a quiet machine (load < 1, no pytest) before measuring."
    return f"It waited for a quiet machine but gave up: still busy ({len(quiet.get('pytest', []))} pytest process(es))."


def markdown(results: dict, rows: list[dict], chart: str | None) -> str:
    m = results["machine"]
    la = results["quiet"]["load_average"]
    lines = [
        f"# wotr benchmark, {results['started']}",
        "",
        f"Mode **{results['mode']}**; {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}. Load average when measuring began: {la[0]:.2f} / {la[1]:.2f} / "
        f"{la[2]:.2f} (1/5/15 min); after: {results['load_average_after'][0]:.2f}. "
        f"{_quiet_text(results['quiet'])} Took {results['duration_s']:.0f} s.",
        "",
        "All traffic on 127.0.0.1; services from `wotr stack up` (Kafka, S3 server versitygw, PostgreSQL); "
        "ClickHouse is the in-process engine (chdb). Load and services share the same cores.",
        "",
        "## Figures",
        "",
        "| hop | figure | bounding ceiling (per event) | fraction | target | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        frac = f"{r['fraction']:.0%}" if r["fraction"] is not None else "—"
        lines.append(f"| {r['hop']} | {r['figure']} | {r['ceiling']} | {frac} | {r['target']} | **{r['status']}** |")
    lines += ["", "Notes per row:", ""]
    for r in rows:
        if r["note"]:
            lines.append(f"- *{r['hop']}*: {r['note']}")
    lines += ["", "## Ceilings (same run)", "", "| ceiling | rate | how | CPU cores used |", "| --- | --- | --- | --- |"]
    for c in _ceiling_rows(results):
        lines.append(f"| {c['ceiling']} | {_num(c['value'])} {c['unit']} | {c['how']} | {c['cpu']} |")
    if chart:
        lines += ["", f"![throughput and latency]({chart})"]
    details = []
    for key, r in results["hops"].items():
        if not r or "skipped" in r:
            continue
        if "events_per_s" in r:
            l = r["latency_ms"]
            details.append(f"- `{key}`: {_num(r['requests_per_s'], 1)} req/s, {r['requests']:,} requests, "
                           f"{r['errors']} errors (status {r['status_errors']}, timeouts {r['timeouts']}); wrk latency "
                           f"(closed loop) p50 {l['p50']:.1f} p99 {l['p99']:.1f} max {l['max']:.1f} ms; CPU: server "
                           f"{r['cpu'].get('server_cores', 0):.2f}, wrk {r['generator_cpu_cores']:.2f}, machine "
                           f"{r['cpu']['machine_busy_cores']:.2f} cores")
        elif "offered_rate" in r:
            l, s = r["latency_ms"], r["service_ms"]
            details.append(f"- `{key}`: {r['ok']:,}/{r['requests']:,} ok at {_num(r['achieved_rate'])}/s; latency from "
                           f"due time p50 {_num(l.get('p50'), 1)} p99 {_num(l.get('p99'), 1)} p99.9 "
                           f"{_num(l.get('p99.9'), 1)} max {_num(l.get('max'), 1)} ms; service time p99 "
                           f"{_num(s.get('p99'), 1)} ms; {r['connections_opened']} connections; generator "
                           f"{r['generator_cpu_cores']:.2f} cores ({r['generator_cpu_s']:.1f} s CPU); server "
                           f"{r['cpu'].get('server_cores', 0):.2f} cores")
    if details:
        lines += ["", "## Details", ""] + details
    for name, p in results.get("profiles", {}).items():
        lines += ["", f"## Profile: {name} (py-spy, {p.get('samples', 0)} samples; {p.get('measured_while_sampling', '')})", ""]
        if "error" in p:
            lines.append(f"error: {p['error']}")
            continue
        lines.append("Self time by library: " + ", ".join(f"{k} {v:.0%}" for k, v in p["self_by_library"]))
        lines += ["", "Inclusive time of wotr's functions:", ""]
        lines += [f"- {v:.0%} {k}" for k, v in p["inclusive_ours"]]
        lines += ["", "Top self time by function:", ""]
        lines += [f"- {v:.0%} {k}" for k, v in p["self_by_function"]]
    if results["errors"]:
        lines += ["", "## Errors", ""] + [f"```\n{e}\n```" for e in results["errors"]]
    lines += ["", "## Clean-up", ""] + [f"- {k}: {v}" for k, v in (results.get("cleanup") or {}).items()]
    lines += ["", "Reproduce: `make bench` (or `.venv/bin/python -m bench`); `--quick` for a smoke test, "
              "`--profile` to add py-spy profiles. See docs/performance.md.", ""]
    return "\n".join(lines)


def chart(results: dict, rows: list[dict], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    hops = results["hops"]
    bars: list[tuple[str, float, str]] = []
    for r in rows:
        if r["figure"].endswith("events/s") or "events/s (" in r["figure"] or r["figure"].endswith("rows/s"):
            if r["value"]:
                bars.append((r["hop"], r["value"], "#1f77b4"))
    for c in _ceiling_rows(results):
        if c["value"]:
            bars.append((f"ceiling: {c['ceiling']}", c["value"], "#bbbbbb"))
    lat_groups: list[tuple[str, dict]] = []
    for key, label in (("ingest_fixed", "ingest {rate}/s, 1 process"), ("e2e", "ingest {rate}/s, consumer on")):
        if hops.get(key) and hops[key].get("latency_ms"):
            lat_groups.append((label.format(rate=_num(hops[key]["offered_rate"])), hops[key]["latency_ms"]))
    for key in sorted(k for k in hops if k.startswith("w") and k.endswith("_fixed") and hops[k]):
        if hops[key].get("latency_ms"):
            lat_groups.append((f"ingest {_num(hops[key]['offered_rate'])}/s, {key[1:].split('_')[0]} workers",
                               hops[key]["latency_ms"]))
    for key in ("e2e", "e2e_low"):
        if hops.get(key) and hops[key].get("e2e_ms"):
            lat_groups.append((f"202 -> row, {hops[key]['offered_rate']:,.0f}/s", hops[key]["e2e_ms"]))
    if hops.get("e2e_low") and hops["e2e_low"].get("latency_ms"):
        lat_groups.insert(0, (f"ingest {hops['e2e_low']['offered_rate']:,.0f}/s, consumer on", hops["e2e_low"]["latency_ms"]))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, max(5, 0.42 * len(bars) + 1.5)),
                                   gridspec_kw={"width_ratios": [1.6, 1]})
    if bars:
        names = [b[0] for b in bars][::-1]
        values = [b[1] for b in bars][::-1]
        colors = [b[2] for b in bars][::-1]
        ax1.barh(names, values, color=colors)
        ax1.set_xscale("log")
        ax1.set_xlabel("per second (log scale): events, rows, objects or requests")
        for y, v in enumerate(values):
            ax1.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        for target, label in ((TARGETS["ingest_events_per_s"], "single target"),
                              (TARGETS["batch_events_per_s"], "batch target"),
                              (TARGETS["consumer_rows_per_s"], "consumer target")):
            ax1.axvline(target, ls=":", lw=1, color="#d62728")
            ax1.text(target, len(values) - 0.5, label, rotation=90, fontsize=7, color="#d62728", va="top")
        ax1.set_title("Throughput: hops (blue) and ceilings (grey)")
        ax1.tick_params(axis="y", labelsize=8)
    if lat_groups:
        qs = ["p50", "p95", "p99"]
        width = 0.8 / len(qs)
        for i, q in enumerate(qs):
            xs = [g + i * width for g in range(len(lat_groups))]
            ys = [max(grp.get(q, 0), 0.01) for _, grp in lat_groups]  # a negative e2e figure shows as ~0
            ax2.bar(xs, ys, width, label=q)
        ax2.set_xticks([g + width for g in range(len(lat_groups))], [n for n, _ in lat_groups], rotation=20,
                       ha="right", fontsize=8)
        ax2.set_yscale("log")
        top = max(max(grp.get(q, 0) for q in qs) for _, grp in lat_groups)
        ax2.set_ylim(0.5, max(top, TARGETS["e2e_p99_ms"]) * 2)
        ax2.set_ylabel("milliseconds (log scale)")
        ax2.axhline(TARGETS["ingest_p99_ms"], ls=":", color="#d62728", lw=1)
        ax2.text(-0.4, TARGETS["ingest_p99_ms"], "ingest p99 target", fontsize=7, color="#d62728", va="bottom")
        ax2.axhline(TARGETS["e2e_p99_ms"], ls="--", color="#d62728", lw=1)
        ax2.text(-0.4, TARGETS["e2e_p99_ms"], "e2e p99 target", fontsize=7, color="#d62728", va="bottom")
        ax2.legend(fontsize=8)
        ax2.set_title("Latency percentiles, open loop (negative e2e not drawn)", fontsize=10)
    fig.suptitle(f"wotr benchmark {results['started']} ({results['mode']}), {results['machine']['cores']} cores, "
                 f"load avg {results['quiet']['load_average'][0]:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_report(results: dict, out_root: Path, started: datetime) -> Path:
    out_root.mkdir(parents=True, exist_ok=True)
    out = out_root / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    rows = figures(results)
    results["figures"] = rows
    png = chart(results, rows, out / "chart.png")
    if png is None:
        results["errors"].append("no chart: matplotlib is not installed (pip install matplotlib, the `bench` extra)")
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.md").write_text(markdown(results, rows, png))
    (out_root / "latest.md").write_text(markdown(results, rows, f"{out.name}/{png}" if png else None))
    shutil.copyfile(out / "report.json", out_root / "latest.json")
    return out


def rerender(report_json: Path) -> Path:
    """Write the markdown and chart again from a saved report.json (after changing this module)."""
    results: dict[str, Any] = json.loads(report_json.read_text())
    started = datetime.fromisoformat(results["started"])
    return write_report(results, report_json.parent.parent, started)
