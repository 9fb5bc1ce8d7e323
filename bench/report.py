"""The report: the goals first, then every measurement in its table (the HTTP hop beside
the bare framework, scale-out, the production edge, the ETL by size, memory, the load
generator's check) and every hop beside the ceiling that bounds it; as markdown, JSON
and a chart."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

TARGETS = {
    "ingest_events_per_s": 2_000,
    "ingest_share_of_bare": 0.40,
    "ingest_p99_ms": 50,
    "batch_events_per_s": 50_000,
    "consumer_rows_per_s": 100_000,
    "consumer_share_of_ceiling": 0.80,
    "e2e_p99_ms": 300,
    "etl_rows_per_s": 50_000,  # at 1M archived events
    "overload_accepted_p99_ms": 100,
    "overload_refused_p99_ms": 100,  # "refused fast": the harness's reading, no slower than an accepted answer
    "rss_flat": 0.10,
}


def _num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "n/a"
    return f"{x:,.{digits}f}"


def _ok(r: Any) -> bool:
    return isinstance(r, dict) and bool(r) and "failure" not in r and "skipped" not in r


def _runs(r: dict) -> list[dict]:
    return r.get("runs") or [r]


def _spread(r: dict | None, digits: int = 0, value: float | None = None) -> str:
    """`median (min–max, n runs)` of a repeated figure; the value alone for one run."""
    if not _ok(r):
        return "n/a"
    rp = r.get("reps")
    if not rp:
        return _num(value, digits)
    if rp["n"] == 1:
        return f"{_num(rp['median'], digits)} (1 run)"
    return f"{_num(rp['median'], digits)} ({_num(rp['min'], digits)}–{_num(rp['max'], digits)}, n={rp['n']})"


def _median(r: dict | None, fallback: str | None = None) -> float | None:
    if not _ok(r):
        return None
    if r.get("reps"):
        return r["reps"]["median"]
    return r.get(fallback) if fallback else None


def _values_spread(values: list[float], digits: int = 0, pct: bool = False) -> str:
    if not values:
        return "n/a"
    f = (lambda v: f"{v:.0%}") if pct else (lambda v: _num(v, digits))
    med = statistics.median(values)
    return f(med) if len(values) == 1 else f"{f(med)} ({f(min(values))}–{f(max(values))})"


def _status(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "missed")


def _accepted_all(r: dict) -> bool:
    return r.get("ok") == r.get("requests") and not r.get("errors")


def _ceiling(results: dict, parts: list[tuple[str, float, str]]) -> tuple[float | None, str]:
    """The lowest of (ceiling key, operations per event, label): events/s and its description."""
    best: tuple[float, str] | None = None
    for key, per_event, label in parts:
        c = results["ceilings"].get(key)
        if not _ok(c):
            continue
        rate = c["reps"]["median"] if c.get("reps") else c.get("value", c.get("requests_per_s"))
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
    return [("bare_post", 1 / size, "bare framework POST"), ("s3_put", 1 / size, "S3 PUT"), ("pg_copy", 1, "PG COPY"),
            ("kafka_produce", 1, "Kafka produce")]


def _single_parts(workers: int = 1) -> list[tuple[str, float, str]]:
    """A single event: one HTTP request (its ceiling: the bare framework), one bus message
    and one metadata row; the raw object and the statements are shared by a group commit."""
    bare = "bare_post" if workers == 1 else f"bare_post_w{workers}"
    label = "bare framework POST" + ("" if workers == 1 else f" ({workers} processes)")
    return [(bare, 1, label), ("kafka_produce", 1, "Kafka produce"), ("pg_copy", 1, "PG COPY")]


def consumer_ceiling(results: dict) -> tuple[float | None, str]:
    ceil = results["ceilings"]
    inserts = [c for c in (ceil.get("clickhouse_insert"), ceil.get("clickhouse_insert_rows")) if _ok(c)]
    if inserts:  # the engine's ceiling: the faster of the two ways of feeding it
        ceil["clickhouse_best"] = max(inserts, key=lambda c: c["value"])
    return _ceiling(results, [("kafka_consume", 1, "Kafka consume"), ("clickhouse_best", 1, "ClickHouse insert")])


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


# -- the goals -----------------------------------------------------------------------------


def goals(results: dict) -> list[dict]:
    """One row per goal of the issues: what was measured (median, spread), target, met/missed."""
    hops, ceil = results["hops"], results["ceilings"]
    rows: list[dict] = []

    def row(goal: str, measured: str, target: str, met: bool | None, note: str = "") -> None:
        rows.append({"goal": goal, "measured": measured, "target": target, "status": _status(met), "note": note})

    sat_key = next((k for k in hops if k.startswith("ingest_sat_c") and _ok(hops[k]) and hops[k].get("reps")), None)
    sat = hops.get(sat_key) if sat_key else None
    v = _median(sat)
    row("POST /ingest saturation, 1 process", f"{_spread(sat)} events/s" if v else "not measured",
        f">= {TARGETS['ingest_events_per_s']:,} events/s", v >= TARGETS["ingest_events_per_s"] if v else None,
        f"wrk, {sat['connections']} connections" if v else "")
    bare = ceil.get("bare_post")
    b = _median(bare)
    if v and b:
        shares = [x / b for x in sat["reps"]["values"]]
        row("POST /ingest saturation as a share of the bare framework", f"{v / b:.0%} ({_num(v)} of {_num(b)} events/s)",
            f">= {TARGETS['ingest_share_of_bare']:.0%}", v / b >= TARGETS["ingest_share_of_bare"],
            f"each wotr run over the bare median: {_values_spread(shares, pct=True)}; bare framework "
            f"{_spread(bare)} events/s" + _memory_share(ceil.get("wotr_memory"), b))
    else:
        row("POST /ingest saturation as a share of the bare framework", "not measured",
            f">= {TARGETS['ingest_share_of_bare']:.0%}", None)

    fixed = hops.get("ingest_fixed")
    if _ok(fixed):
        p99, shares = _median(fixed), [r["ok"] / max(r["requests"], 1) for r in _runs(fixed)]
        all_ok = all(_accepted_all(r) for r in _runs(fixed))
        row(f"POST /ingest at {_num(fixed['offered_rate'])}/s offered, 1 process",
            f"p99 {_spread(fixed, 1)} ms; accepted {_values_spread(shares, pct=True)}",
            f"all accepted, p99 <= {TARGETS['ingest_p99_ms']} ms",
            p99 <= TARGETS["ingest_p99_ms"] and statistics.median(shares) >= 1.0 and all_ok,
            f"achieved {_num(fixed['achieved_rate'])}/s in the median run; errors {fixed['errors'] or 0}")
    else:
        row("POST /ingest at 1,000/s offered, 1 process", "not measured", "all accepted, p99 <= 50 ms", None)

    batch_key = max((k for k in hops if k.startswith("batch_") and _ok(hops[k])), key=lambda k: int(k.split("_")[1]),
                    default=None)
    bt = hops.get(batch_key) if batch_key else None
    v = _median(bt, "events_per_s")
    row(f"POST /ingest/batch, {bt['events_per_request'] if bt else 1000:,} per request, 1 process",
        f"{_spread(bt)} events/s" if v else "not measured", f">= {TARGETS['batch_events_per_s']:,} events/s",
        v >= TARGETS["batch_events_per_s"] if v else None)

    cons = hops.get("consumer")
    v = _median(cons, "rows_per_s")
    c_value, c_text = consumer_ceiling(results)
    if v:
        share = v / c_value if c_value else None
        met = v >= TARGETS["consumer_rows_per_s"] or (share is not None and share >= TARGETS["consumer_share_of_ceiling"])
        row("consumer Kafka -> ClickHouse (batches of 5,000)", f"{_spread(cons)} events/s"
            + (f" = {share:.0%} of {c_text}" if share else ""),
            f">= {TARGETS['consumer_rows_per_s']:,} events/s or >= {TARGETS['consumer_share_of_ceiling']:.0%} of "
            "min(consume ceiling, insert ceiling)", met,
            "the run loop of `wotr consume` in the harness process; ceilings from the same run (one each)")
    else:
        row("consumer Kafka -> ClickHouse", "not measured", f">= {TARGETS['consumer_rows_per_s']:,} events/s", None)

    for key, default_rate in (("e2e_low", 100), ("e2e", 1000)):
        r = hops.get(key)
        if _ok(r) and r.get("e2e_ms"):
            shares = [x["ok"] / max(x["requests"], 1) for x in _runs(r)]
            found = [x.get("rows_matched", 0) / max(x["ok"], 1) for x in _runs(r)]
            all_ok = statistics.median(shares) >= 1.0 and statistics.median(found) >= 1.0
            p99 = _median(r)
            row(f"end to end, 202 -> row queryable, at {_num(r['offered_rate'])}/s offered",
                f"p99 {_spread(r)} ms; accepted {_values_spread(shares, pct=True)}; rows found "
                f"{_values_spread(found, pct=True)}", f"p99 <= {TARGETS['e2e_p99_ms']} ms, all accepted",
                p99 <= TARGETS["e2e_p99_ms"] and all_ok,
                f"p50 {_num(r['e2e_ms'].get('p50'))} ms in the median run; ingest p99 "
                f"{_num(r['latency_ms'].get('p99'), 1)} ms; from the request's due time to the row (the API's own "
                f"latency included) p50 {_num(r.get('due_to_row_ms', {}).get('p50'))} / p99 "
                f"{_num(r.get('due_to_row_ms', {}).get('p99'))} ms")
        else:
            row(f"end to end, 202 -> row queryable, at {default_rate:,}/s offered", "not measured",
                f"p99 <= {TARGETS['e2e_p99_ms']} ms, all accepted", None, (r or {}).get("failure", "")[:200])

    etl = hops.get("etl")
    if _ok(etl) and etl.get("by_size"):
        for k, lay in enumerate(_etl_layouts(etl)):
            sizes = lay.get("sizes") or []
            name = _etl_layout_name(lay)
            if not lay.get("by_size"):
                row(f"ETL ({name})", "not measured", "(reported)", None, str(lay.get("error") or "")[:200])
                continue
            for i, size in enumerate(sizes):
                e = lay["by_size"].get(size) or lay["by_size"].get(str(size)) or {}
                last = k == 0 and i == len(sizes) - 1  # the goal: the headline layout's largest size
                target = f">= {TARGETS['etl_rows_per_s']:,} rows/s" if last else "(reported)"
                if e.get("rows_per_s"):
                    row(f"ETL at {size:,} archived events ({name})", f"{_spread(e)} rows/s", target,
                        e["rows_per_s"] >= TARGETS["etl_rows_per_s"] if last else None,
                        "" if e.get("complete") else "time bound hit after the runs shown")
                else:
                    largest = lay.get("largest_done")
                    le = (lay["by_size"].get(largest) or lay["by_size"].get(str(largest)) or {}) if largest else {}
                    budget = lay["budgets_s"][min(i, len(lay["budgets_s"]) - 1)]
                    row(f"ETL at {size:,} archived events ({name})", f"did not finish within {budget:.0f} s", target,
                        False if last else None,
                        f"largest size that finished: {largest:,} events at {_num(le.get('rows_per_s'))} rows/s"
                        if largest else "no size finished")
    else:
        why = "not measured" if not etl else etl.get("skipped") or etl.get("failure") or "failed"
        row("ETL rows/s at growing archive sizes", why, f">= {TARGETS['etl_rows_per_s']:,} rows/s at 1M", None)

    for key in sorted((k for k in hops if k.startswith("overload_")), key=lambda k: float(k.split("_")[1])):
        r = hops[key]
        if not _ok(r):
            row(f"overload {key.split('_')[1]}x the saturation", "not measured",
                f"accepted p99 <= {TARGETS['overload_accepted_p99_ms']} ms, excess refused fast", None)
            continue
        acc_p99 = _median(r)
        ref_p99 = [x["refused_ms"].get("p99") for x in _runs(r) if x.get("refused")]
        ref_med = statistics.median(ref_p99) if ref_p99 else None
        met = acc_p99 <= TARGETS["overload_accepted_p99_ms"] and (
            ref_med is None or ref_med <= TARGETS["overload_refused_p99_ms"])
        row(f"overload {r['factor']:g}x the saturation ({_num(r['offered_rate'])}/s offered)",
            f"accepted p99 {_spread(r)} ms ({_values_spread([x['accepted_share'] for x in _runs(r)], pct=True)} "
            f"accepted); refused {_values_spread([x['refused_share'] for x in _runs(r)], pct=True)}, refusal p99 "
            f"{_values_spread(ref_p99) if ref_p99 else 'n/a'} ms",
            f"accepted p99 <= {TARGETS['overload_accepted_p99_ms']} ms; refusals (503) p99 <= "
            f"{TARGETS['overload_refused_p99_ms']} ms", met, f"WOTR_INGEST_QUEUE_MAX={r.get('queue_max')}")

    sus = hops.get("sustained")
    if _ok(sus):
        row(f"API RSS flat over a {sus['duration_s']:.0f} s sustained run",
            f"{_num(sus['rss_first_mib'])} -> {_num(sus['rss_last_mib'])} MiB ({sus['rss_growth']:+.1%}; max "
            f"{_num(sus['rss_max_mib'])} MiB)", f"within {TARGETS['rss_flat']:.0%}", sus["rss_flat"],
            f"at {_num(sus['offered_rate'])}/s offered, {sus['ok']:,}/{sus['requests']:,} accepted")
    else:
        row("API RSS flat over a 60 s sustained run", "not measured", f"within {TARGETS['rss_flat']:.0%}", None)
    peaks = _peak_rows(results)
    if peaks:
        top = max(peaks, key=lambda p: p["peak_mib"])
        row("peak RSS of each process", f"{len(peaks)} processes; largest {_num(top['peak_mib'])} MiB ({top['role']})",
            "(reported)", None, "see Memory")
    return rows


# -- tables ----------------------------------------------------------------------------------


def _http_table(results: dict) -> list[str]:
    hops, ceil = results["hops"], results["ceilings"]
    bare, bare_h, health = ceil.get("bare_post"), ceil.get("bare_health"), ceil.get("http")
    sat_key = next((k for k in hops if k.startswith("ingest_sat_c") and _ok(hops[k]) and hops[k].get("reps")), None)
    sat = hops.get(sat_key) if sat_key else None
    lines = ["## The HTTP hop beside the bare framework", "",
             "The bare framework (`bench/bare.py`): Litestar + msgspec, `POST /ingest` decodes the body into a struct "
             "and answers 202, `GET /health` answers; no I/O, no middleware; uvicorn with httptools and uvloop, "
             "access log off, one process (as `wotr serve`). Both saturated with wrk, the same body and connections, "
             "in the same run.", "",
             "| | bare framework | wotr (`wotr serve --api-only`) | wotr / bare |", "| --- | --- | --- | --- |"]

    def ratio(a: dict | None, b: dict | None) -> str:
        va, vb = _median(a), _median(b)
        return f"{va / vb:.0%}" if va and vb else "—"

    def cpu(r: dict | None) -> str:
        return _num(r.get("server_cpu_us_per_event")) if _ok(r) else "n/a"

    def p99(r: dict | None) -> str:
        return _num(r["latency_ms"]["p99"], 1) if _ok(r) else "n/a"

    lines.append(f"| POST /ingest, events/s | {_spread(bare)} | {_spread(sat)} | **{ratio(sat, bare)}** |")
    lines.append(f"| POST /ingest, µs server CPU per request (median run) | {cpu(bare)} | {cpu(sat)} | |")
    lines.append(f"| POST /ingest, p99 ms at saturation (closed loop, median run) | {p99(bare)} | {p99(sat)} | |")
    lines.append(f"| GET /health, requests/s | {_spread(bare_h)} | {_spread(health)} | {ratio(health, bare_h)} |")
    lines.append(f"| GET /health, µs server CPU per request | {cpu(bare_h)} | {cpu(health)} | |")
    return lines


def _scale_table(results: dict) -> list[str]:
    hops, ceil, plan = results["hops"], results["ceilings"], results["plan"]
    lines = []
    for n in plan.get("workers", [2]):
        lines += ["", f"## Scale-out: 1 -> {n} processes", "",
                  f"{n} API processes: `bench/server.py` (uvicorn workers sharing the socket, each the app `wotr serve` "
                  "serves, with its server settings; one engine directory each). Consumers: `wotr consume` processes "
                  "in one group on a topic of their own, each with its own engine directory, metrics port and "
                  "`WOTR_SQL_PORT`; the events are produced once the group is stable, and rows/s counts from the "
                  "moment every process loads rows until all are in.", "",
                  f"| figure | 1 process | {n} processes | growth |", "| --- | --- | --- | --- |"]

        def line(label: str, one: dict | None, two: dict | None, digits: int = 0, unit: str = "") -> None:
            a, b = _median(one), _median(two)
            growth = f"×{b / a:.2f}" if a and b else "—"
            lines.append(f"| {label} | {_spread(one, digits)}{unit} | {_spread(two, digits)}{unit} | {growth} |")

        sat_key = next((k for k in hops if k.startswith("ingest_sat_c") and _ok(hops[k])), None)
        line("bare framework POST /ingest, events/s", ceil.get("bare_post"), ceil.get(f"bare_post_w{n}"))
        line("wotr POST /ingest saturation, events/s", hops.get(sat_key) if sat_key else None, hops.get(f"w{n}_sat"))
        b1, b2 = _median(ceil.get("bare_post")), _median(ceil.get(f"bare_post_w{n}"))
        w1 = _median(hops.get(sat_key)) if sat_key else None
        w2 = _median(hops.get(f"w{n}_sat"))
        lines.append(f"| wotr POST /ingest as a share of the bare framework | "
                     f"{f'{w1 / b1:.0%}' if w1 and b1 else 'n/a'} | {f'{w2 / b2:.0%}' if w2 and b2 else 'n/a'} | |")
        line("wotr GET /health, requests/s", ceil.get("http"), ceil.get(f"http_w{n}"))
        f1, f2 = hops.get("ingest_fixed"), hops.get(f"w{n}_fixed")

        def fixed(r: dict | None) -> str:
            if not _ok(r):
                return "n/a"
            shares = [x["ok"] / max(x["requests"], 1) for x in _runs(r)]
            return f"p99 {_spread(r, 1)} ms, {_values_spread(shares, pct=True)} accepted"

        a, b = _median(f1), _median(f2)
        lines.append(f"| POST /ingest at {_num(plan['rate'])}/s offered | {fixed(f1)} | {fixed(f2)} | "
                     f"{f'p99 ×{b / a:.2f}' if a and b else '—'} |")
        bkey = f"batch_{plan['batch_sizes'][-1]}"
        line(f"POST /ingest/batch, {plan['batch_sizes'][-1]:,} per request, events/s", hops.get(bkey),
             hops.get(f"w{n}_batch"))
        c1, c2 = hops.get("consume_p1"), hops.get(f"consume_p{n}")
        windows = {x.get("window") for c in (c1, c2) if _ok(c) for x in _runs(c)}
        if windows == {"all processes loading"} or not (_ok(c1) and _ok(c2)):
            line("consumer processes (`wotr consume`), rows/s", c1, c2)
        else:  # a small topic: the same measure on both sides, from the start of producing
            v1 = [x["rows_per_s_from_produce"] for x in _runs(c1)]
            v2 = [x["rows_per_s_from_produce"] for x in _runs(c2)]
            g = statistics.median(v2) / statistics.median(v1) if v1 and v2 else None
            lines.append(f"| consumer processes (`wotr consume`), rows/s from the start of producing (too few rows "
                         f"for the all-loading window) | {_values_spread(v1)} | {_values_spread(v2)} | "
                         f"{f'×{g:.2f}' if g else '—'} |")
        if _ok(c2):
            lines += ["", f"With {n} consumer processes the median run loaded "
                      + ", ".join(f"{x:,.0f}" for x in c2["rows_per_process"]) + f" rows each ({c2['partitions']} "
                      f"partitions); producing the events (in the harness, at the Kafka produce ceiling's pace) took "
                      f"{_num(c2.get('produce_s'), 1)} s, overlapping the start of the window."]
    return lines


def _overload_table(results: dict) -> list[str]:
    hops = results["hops"]
    keys = sorted((k for k in hops if k.startswith("overload_") and _ok(hops[k])), key=lambda k: float(k.split("_")[1]))
    settings = results.get("settings", {})
    lines = ["", "## The production edge: overload", "",
             f"The open-loop generator at 1.5× and 3× the sustainable rate (the measured POST /ingest saturation, "
             f"median), up to {results['plan'].get('overload_connections', 0):,} connections (more than the API holds, "
             f"so the API's own bound refuses the excess, not the generator's pool). API: `wotr serve --api-only` with "
             f"WOTR_INGEST_QUEUE_MAX={settings.get('WOTR_INGEST_QUEUE_MAX')} (wotr's default is "
             f"{settings.get('WOTR_INGEST_QUEUE_MAX_default')}); besides the queue, up to "
             f"{settings.get('WOTR_INGEST_FLUSHES', 4)} flush(es) of up to 200 events in progress"
             + (f" (WOTR_INGEST_FLUSHES), and at most {settings['WOTR_INGEST_IN_FLIGHT_MAX']} requests admitted and "
                "unanswered (WOTR_INGEST_IN_FLIGHT_MAX)" if "WOTR_INGEST_IN_FLIGHT_MAX" in settings else "")
             + ". Latency from each request's due time; accepted = 202, refused = 503.", "",
             "| offered | accepted | accepted p50 / p99 ms | refused (503) | refused p50 / p99 ms | first 503 after | "
             "other errors | generator | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    goal = {g["goal"]: g for g in goals(results)}
    for k in keys:
        r = hops[k]
        g = next((v for name, v in goal.items() if name.startswith(f"overload {r['factor']:g}x")), {})
        l, f = r["latency_ms"], r["refused_ms"]
        other = {c: n for c, n in r["errors"].items() if c != "503"}
        lines.append(
            f"| {_num(r['offered_rate'])}/s ({r['factor']:g}× {_num(r['sustainable'])}/s) | "
            f"{_values_spread([x['accepted_share'] for x in _runs(r)], pct=True)} ({_num(r['achieved_rate'])}/s) | "
            f"{_num(l.get('p50'))} / {_spread(r)} | {_values_spread([x['refused_share'] for x in _runs(r)], pct=True)} | "
            f"{_num(f.get('p50'), 1)} / {_num(f.get('p99'), 1)} | "
            f"{_num(r.get('first_refused_s'), 1) + ' s' if r.get('first_refused_s') is not None else 'never'} | "
            f"{', '.join(f'{c}: {n:,}' for c, n in other.items()) or 'none'} | "
            f"sent in {_num(r.get('sending_s'), 1)} s of {_num(r.get('duration_s'), 1)} s, "
            f"{r.get('connections_opened', 0):,} connections, {_num(r.get('generator_cpu_cores'), 2)} cores | "
            f"**{g.get('status', '—')}** |")
    if not keys:
        lines.append("| not measured | | | | | | | | |")
    lines += ["", "Accepted p99 is the median over the repetitions (min–max); the other columns are the median run's "
              "(shares: median and spread). A request still unanswered after the generator's timeout counts under "
              "other errors (`timeout`), as does a connection the server reset. \"sent in\" is how long the generator "
              "took to send what was due within the run's duration: longer means the generator itself fell behind "
              "(see the generator check)."]
    return lines


def _edge_cost_table(results: dict) -> list[str]:
    hops = results["hops"]
    sat_key = next((k for k in hops if k.startswith("ingest_sat_c") and _ok(hops[k]) and hops[k].get("reps")), None)
    plain = hops.get(sat_key) if sat_key else None
    lines = ["", "## The production edge: cost of write keys and gzip", "",
             "POST /ingest saturation (wrk, same connections and duration), the three variants in turn in each "
             "repetition. Write key: a second API process with WOTR_REQUIRE_WRITE_KEY=true (otherwise the same), the "
             f"key made by `wotr keys create -q` and sent as X-Write-Key (lookups cached "
             f"{results.get('settings', {}).get('WOTR_WRITE_KEY_CACHE_SECONDS', '?')} s). gzip: the same event "
             "gzip-compressed, `Content-Encoding: gzip`.", "",
             "| variant | events/s | vs plain | µs server CPU per event | vs plain | errors |",
             "| --- | --- | --- | --- | --- | --- |"]
    p_eps, p_cpu = _median(plain), _cpu_median(plain)
    for label, r in (("plain", plain), ("write key (X-Write-Key)", hops.get("ingest_auth")),
                     ("gzip body (Content-Encoding: gzip)", hops.get("ingest_gzip"))):
        if not _ok(r):
            lines.append(f"| {label} | not measured | | | | {(r or {}).get('failure', '')[:120]} |")
            continue
        v, c = _median(r), _cpu_median(r)
        extra = f" ({r['gzip_bytes']} of {r['body_bytes']} bytes)" if r.get("gzip_bytes") else ""
        lines.append(f"| {label}{extra} | {_spread(r)} | {f'{v / p_eps - 1:+.0%}' if p_eps and r is not plain else '—'} "
                     f"| {_values_spread([x['server_cpu_us_per_event'] for x in _runs(r)])} | "
                     f"{f'{c - p_cpu:+,.0f} µs' if p_cpu and r is not plain else '—'} | "
                     f"{sum(x['errors'] for x in _runs(r))} |")
    return lines


def _cpu_median(r: dict | None) -> float | None:
    if not _ok(r):
        return None
    return statistics.median(x["server_cpu_us_per_event"] for x in _runs(r))


def _etl_layouts(etl: dict) -> list[dict]:
    """The ETL hop's layouts: the headline one (the hop itself), then those measured after it."""
    return [etl, *(etl.get("also") or [])]


def _etl_layout_name(lay: dict) -> str:
    """`ndjson-200` (NDJSON objects of 200 events) or `single` (one object per event; results
    from before layouts were named were all single)."""
    return lay.get("layout") or "single"


def _etl_layout_words(lay: dict) -> str:
    n = lay.get("per_object") or 1
    return "one object per event" if n == 1 else f"NDJSON objects of {n:,} events, as the group commit writes them"


def _etl_table(results: dict) -> list[str]:
    etl = results["hops"].get("etl")
    lines = ["", "## ETL by archive size", ""]
    if not _ok(etl) or not etl.get("by_size"):
        return lines + [f"Not measured: {(etl or {}).get('skipped') or (etl or {}).get('failure') or 'failed'}"]
    layouts = _etl_layouts(etl)
    lines += [f"`python -m bench.etl` (one process and one Spark session, local[2], per archive layout): raw "
              f"events generated as `wotr_apps.etl.bench` generates them (one in 1,000 torn), in "
              + "; then ".join(f"`{_etl_layout_name(lay)}`: {_etl_layout_words(lay)}" for lay in layouts)
              + f". The archive is grown to each size in turn, the ETL run over the whole archive at each size "
              f"({etl['runs_per_size']} run(s)"
              + (f"; {results['plan'].get('etl_warmup')} unmeasured warm-up run(s) at the first size of each layout"
                 if results["plan"].get("etl_warmup") else "; no warm-up run: the first size's run is a cold one")
              + "). Each size is bounded in time (generation and runs). Spark started in "
              + ", ".join(f"{_num(lay.get('spark_start_s'), 1)} s ({_etl_layout_name(lay)})" for lay in layouts)
              + ".", "",
              "| layout | archived events | rows/s | run seconds | generation s | time bound | status |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for lay in layouts:
        name = _etl_layout_name(lay)
        if not lay.get("by_size"):
            lines.append(f"| {name} | — | — | — | — | — | not measured: {str(lay.get('error') or '')[:200]} |")
            continue
        for i, size in enumerate(lay["sizes"]):
            e = lay["by_size"].get(size) or lay["by_size"].get(str(size)) or {}
            budget = lay["budgets_s"][min(i, len(lay["budgets_s"]) - 1)]
            runs = e.get("runs") or []
            if e.get("rows_per_s"):
                status = "finished" if e.get("complete") else "runs shown finished; stopped at the time bound"
                if e.get("skipped_runs"):
                    status += f" ({e['skipped_runs']} run(s) not started: time bound)"
                lines.append(f"| {name} | {size:,} | {_spread(e)} | {_values_spread([r['seconds'] for r in runs], 1)} | "
                             f"{_num(e.get('generate_s'), 1)} | {budget:.0f} s | {status} |")
            else:
                lines.append(f"| {name} | {size:,} | — | — | {_num(e.get('generate_s'), 1)} | {budget:.0f} s | "
                             f"**did not finish within {budget:.0f} s** |")
        if lay.get("stopped_at_size"):
            notes.append(f"The ETL ({name}) at {lay['stopped_at_size']:,} events did not finish within its time "
                         f"bound; the largest size that did: {lay['largest_done']:,} events."
                         if lay.get("largest_done") else
                         f"The ETL ({name}) at {lay['stopped_at_size']:,} events did not finish within its time "
                         "bound; no size did.")
    if notes:
        lines += ["", *notes]
    return lines


def _peak_rows(results: dict) -> list[dict]:
    rss = results.get("rss") or {}
    out = []
    for svc in rss.get("services", []):
        for p in svc["processes"]:
            out.append({"role": svc["role"], **p})
    etl = results["hops"].get("etl")
    if _ok(etl):
        for lay in _etl_layouts(etl):
            for p in lay.get("peak_rss", []):
                out.append({"role": f"etl ({_etl_layout_name(lay)})", **p})
    if rss.get("harness"):
        out.append({"role": "harness", **rss["harness"]})
    return out


def _memory_table(results: dict) -> list[str]:
    lines = ["", "## Memory", ""]
    sus = results["hops"].get("sustained")
    if _ok(sus):
        samples = sus.get("rss_samples", [])
        lines += [f"API RSS (its process tree) over a {sus['duration_s']:.0f} s sustained run at "
                  f"{_num(sus['offered_rate'])}/s offered ({sus['ok']:,} of {sus['requests']:,} accepted, p99 "
                  f"{_num(sus['latency_ms'].get('p99'), 1)} ms), sampled every second after the earlier phases warmed "
                  f"it: {_num(sus['rss_first_mib'], 1)} MiB at the start, {_num(sus['rss_last_mib'], 1)} MiB at the end "
                  f"({sus['rss_growth']:+.1%}), min {_num(sus['rss_min_mib'], 1)}, max {_num(sus['rss_max_mib'], 1)} "
                  f"MiB: **{'flat' if sus['rss_flat'] else 'not flat'}** (goal: within "
                  f"{TARGETS['rss_flat']:.0%}). Samples (s, MiB): "
                  + ", ".join(f"{t:g}: {v:,.0f}" for t, v in samples[:: max(1, len(samples) // 12)]) + ".", ""]
    peaks = _peak_rows(results)
    if peaks:
        lines += ["Peak RSS (VmHWM) of each process, read just before it was stopped (the ETL's while it ran; the "
                  "harness from its own rusage):", "", "| phase / role | pid | process | peak RSS MiB |",
                  "| --- | --- | --- | --- |"]
        for p in peaks:
            lines.append(f"| {p['role']} | {p['pid']} | `{p['cmd']}` | {_num(p['peak_mib'])} |")
    return lines


def _generator_table(results: dict) -> list[str]:
    g = results.get("generator_check")
    lines = ["", "## Load generator check: bench/openloop.py beside wrk", ""]
    if not g:
        return lines + ["Not measured."]
    sat, low = g["saturation"], g["low_rate"]
    wl, ol = low["wrk_c1_latency_ms"], low["openloop_latency_ms"]
    lines += [f"On one hop, {g['hop']}. Saturation: wrk's figure (median, {sat['wrk_connections']} connections) "
              f"against the open-loop generator offered 1.5× that: if the generator were the bound, it would get "
              f"less answered than wrk measured. Latency: wrk with one connection (closed loop, one request at a "
              f"time) against the open-loop generator at {_num(low['openloop_rate'])}/s (requests rarely overlap); "
              "wrk has no fixed-rate mode, so this is the low-load comparison.", "",
              "| check | wrk | open loop | open loop / wrk | generator CPU (cores) |", "| --- | --- | --- | --- | --- |",
              f"| saturation, answered/s | {_num(sat['wrk_requests_per_s'])} | {_num(sat['openloop_answered_per_s'])} "
              f"(of {_num(sat['openloop_offered'])} offered; errors {sat['openloop_errors'] or 'none'}) | "
              f"{sat['ratio']:.0%} | wrk {sat['wrk_cores']:.2f}, open loop {sat['openloop_cores']:.2f} |",
              f"| low load, p50 ms | {_num(wl['p50'], 2)} | {_num(ol.get('p50'), 2)} | "
              f"{_ratio(ol.get('p50'), wl['p50'])} | |",
              f"| low load, p99 ms | {_num(wl['p99'], 2)} | {_num(ol.get('p99'), 2)} | "
              f"{_ratio(ol.get('p99'), wl['p99'])} | |"]
    return lines


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


# -- hops beside their ceilings ----------------------------------------------------------------


def figures(results: dict) -> list[dict]:
    """Table rows: hop, figure, ceiling, fraction, target, status."""
    hops = results["hops"]
    rows: list[dict] = []

    def row(hop: str, figure: str, value: float | None, ceiling: tuple[float | None, str] | None,
            target: str, met: bool | None, note: str = "") -> None:
        c_value, c_text = ceiling if ceiling else (None, "—")
        fraction = value / c_value if value is not None and c_value else None
        rows.append({"hop": hop, "figure": figure, "value": value, "ceiling": c_text, "ceiling_value": c_value,
                     "fraction": fraction, "target": target, "status": _status(met), "note": note})

    single_ceiling = _ceiling(results, _single_parts())
    for key in sorted((k for k in hops if k.startswith("ingest_sat_c") and _ok(hops[k])),
                      key=lambda k: int(k[len("ingest_sat_c"):])):
        best = hops[key]
        v = _median(best, "events_per_s")
        row(f"POST /ingest, saturation (1 process, {best['connections']} connections)", f"{_spread(best, value=v)} events/s",
            v, single_ceiling, f">= {TARGETS['ingest_events_per_s']:,} events/s", v >= TARGETS["ingest_events_per_s"],
            f"errors {best['errors']}; server {best['cpu'].get('server_cores', 0):.2f} cores; "
            f"wrk {best['generator_cpu_cores']:.2f} cores; machine busy {best['cpu']['machine_busy_cores']:.2f} of "
            f"{results['machine']['cores']} cores; {_server_note(best)}")
    for key, label in (("ingest_fixed", "POST /ingest at {rate}/s offered (1 process)"),
                       ("e2e", "POST /ingest at {rate}/s, consumer running"),
                       ("e2e_low", "POST /ingest at {rate}/s, consumer running")):
        r = hops.get(key)
        if _ok(r) and r.get("latency_ms"):
            lat = r["latency_ms"]
            ok_rate = _accepted_all(r)
            met = lat.get("p99", math.inf) <= TARGETS["ingest_p99_ms"] and ok_rate
            row(label.format(rate=_num(r["offered_rate"])),
                f"p50 {_num(lat.get('p50'), 1)} / p95 {_num(lat.get('p95'), 1)} / p99 {_num(lat.get('p99'), 1)} ms"
                + (" (median run)" if r.get("reps", {}).get("n", 1) > 1 else ""), lat.get("p99"), None,
                f"p99 <= {TARGETS['ingest_p99_ms']} ms", met if key == "ingest_fixed" else None,
                f"achieved {_num(r['achieved_rate'])}/s, errors {r['errors'] or 0}, generator "
                f"{r['generator_cpu_cores']:.2f} cores, server {r['cpu'].get('server_cores', 0):.2f} cores; {_server_note(r)}")
    for key in sorted((k for k in hops if k.startswith("batch_") and _ok(hops[k])), key=lambda k: int(k.split("_")[1])):
        r = hops[key]
        size = r["events_per_request"]
        v = _median(r, "events_per_s")
        row(f"POST /ingest/batch, {size} per request (1 process)", f"{_spread(r, value=v)} events/s", v,
            _ceiling(results, _BATCH_PARTS(size)), f">= {TARGETS['batch_events_per_s']:,} events/s",
            v >= TARGETS["batch_events_per_s"],
            f"{_num(r['requests_per_s'], 1)} req/s, {r['connections']} connections, errors {r['errors']}, "
            f"server {r['cpu'].get('server_cores', 0):.2f} cores; {_server_note(r)}")
    c_ceiling = consumer_ceiling(results)
    for key, label, target in (("consumer", "consumer Kafka -> ClickHouse, batches of 5,000", True),
                               ("consumer_naive", "consumer, batches of 1 (per-message design)", False)):
        r = hops.get(key)
        if _ok(r):
            v = _median(r, "rows_per_s")
            row(label, f"{_spread(r, value=v)} events/s", v, c_ceiling,
                f">= {TARGETS['consumer_rows_per_s']:,} events/s or >= 80% of the ceiling" if target else "(comparison)",
                (v >= TARGETS["consumer_rows_per_s"] or bool(c_ceiling[0] and v >= 0.8 * c_ceiling[0])) if target else None,
                f"{r['rows']:,} rows in {r['seconds']:.1f}s, {r['batches']:,} batches; bench process "
                f"{r['cpu']['bench_process_cores']:.2f} cores" + ("" if r["complete"] or not target else "; time bound hit"))
    for key in ("e2e", "e2e_low"):
        r = hops.get(key)
        if not (_ok(r) and r.get("e2e_ms")):
            continue
        e = r["e2e_ms"]
        overloaded = r["achieved_rate"] < 0.97 * r["offered_rate"] or sum(r["errors"].values()) > 0.01 * r["requests"]
        v = _median(r)
        row(f"end to end, 202 -> row in ClickHouse, at {_num(r['offered_rate'])}/s offered",
            f"p50 {_num(e.get('p50'))} / p99 {_spread(r)} ms", v, None, f"p99 <= {TARGETS['e2e_p99_ms']:,} ms",
            v <= TARGETS["e2e_p99_ms"] and r["rows_matched"] >= r["ok"] and _accepted_all(r),
            f"{r['rows_matched']:,} of {r['ok']:,} accepted rows found; API accepted {_num(r['achieved_rate'])}/s"
            + (" (overloaded: the 202 itself comes late, so a row can be loaded before its 202 arrives and the "
               "figure can be negative)" if overloaded else "")
            + f"; ingest latency p99 {_num(r['latency_ms'].get('p99'), 1)} ms; consumer "
            f"{r['cpu'].get('consumer_cores', 0):.2f} cores; engine loaded_at - created_at p50 "
            f"{_num(r['loaded_minus_created_ms'].get('p50'))} / p99 {_num(r['loaded_minus_created_ms'].get('p99'))} ms")
    for key in sorted(k for k in hops if k.startswith("w") and k.endswith("_sat") and _ok(hops[k])):
        r = hops[key]
        n = int(key[1:].split("_")[0])
        v = _median(r, "events_per_s")
        row(f"POST /ingest, saturation ({n} uvicorn workers)", f"{_spread(r, value=v)} events/s", v,
            _ceiling(results, _single_parts(n)), f">= {TARGETS['ingest_events_per_s']:,} events/s",
            v >= TARGETS["ingest_events_per_s"],
            f"errors {r['errors']}; server {r['cpu'].get('server_cores', 0):.2f} cores; {_server_note(r)}")
        f = hops.get(f"w{n}_fixed")
        if _ok(f) and f.get("latency_ms"):
            lat = f["latency_ms"]
            row(f"POST /ingest at {_num(f['offered_rate'])}/s offered ({n} uvicorn workers)",
                f"p50 {_num(lat.get('p50'), 1)} / p95 {_num(lat.get('p95'), 1)} / p99 {_spread(f, 1)} ms",
                _median(f), None, f"p99 <= {TARGETS['ingest_p99_ms']} ms",
                _median(f) <= TARGETS["ingest_p99_ms"] and _accepted_all(f),
                f"achieved {_num(f['achieved_rate'])}/s, errors {f['errors'] or 0}; {_server_note(f)}")
        b = hops.get(f"w{n}_batch")
        if _ok(b):
            size = b["events_per_request"]
            v = _median(b, "events_per_s")
            row(f"POST /ingest/batch, {size} per request ({n} uvicorn workers)", f"{_spread(b, value=v)} events/s",
                v, _ceiling(results, _BATCH_PARTS(size)), f">= {TARGETS['batch_events_per_s']:,} events/s",
                v >= TARGETS["batch_events_per_s"], f"errors {b['errors']}; {_server_note(b)}")
    for key in sorted(k for k in hops if k.startswith("consume_p") and _ok(hops[k])):
        r = hops[key]
        v = _median(r, "rows_per_s")
        row(f"`wotr consume`, {r['processes']} process(es) in one group", f"{_spread(r, value=v)} events/s", v,
            c_ceiling, "(scale-out)", None,
            f"rows per process {', '.join(f'{x:,.0f}' for x in r['rows_per_process'])}; {r['partitions']} partitions; "
            f"rows/s counted {r.get('window', '?')}")
    etl = hops.get("etl")
    if _ok(etl) and etl.get("by_size"):
        for lay in _etl_layouts(etl):
            for size, e in (lay.get("by_size") or {}).items():
                if e.get("rows_per_s"):
                    row(f"ETL raw JSON -> curated Parquet (Spark local[2]), {int(size):,} events "
                        f"({_etl_layout_name(lay)})", f"{_spread(e)} rows/s", e["rows_per_s"], None, "(see goals)",
                        None, f"generation {_num(e.get('generate_s'), 1)} s")
    elif etl:
        row("ETL raw JSON -> curated Parquet (Spark local[2])", "skipped", None, None, "(none)", None,
            str(etl.get("skipped") or etl.get("failure") or etl.get("error"))[:200])
    return rows


def _memory_share(memory: dict | None, bare: float) -> str:
    """The same API without I/O (memory profile), as a share of the bare framework: the
    ceiling of what one interpreter does per request in wotr's own code."""
    m = _median(memory) if _ok(memory) else None
    return f"; wotr on the memory profile (no I/O) {_num(m)} events/s = {m / bare:.0%} of the bare framework" if m else ""


def _ceiling_rows(results: dict) -> list[dict]:
    names = {"bare_post": "bare framework POST /ingest (Litestar + msgspec, no I/O)",
             "bare_health": "bare framework GET /health",
             "http": "wotr GET /health (the API process)",
             "wotr_memory": "wotr POST /ingest on the memory profile (in-memory adapters: its own work, no I/O)", "s3_put": "S3 PUT (minio SDK, as wotr puts)",
             "s3_put_server": "S3 PUT, server only (wrk, presigned)", "pg_insert": "PostgreSQL INSERT, 1 row per transaction",
             "pg_copy": "PostgreSQL COPY", "kafka_produce": "Kafka produce", "kafka_consume": "Kafka consume",
             "clickhouse_insert": "ClickHouse insert, 5,000-row batches, columns + int timestamps",
             "clickhouse_insert_rows": "ClickHouse insert, 5,000-row batches, rows of datetimes (as the sink)"}
    out = []
    for key in sorted(k for k in results["ceilings"] if k.startswith(("http_w", "bare_post_w"))):
        n = key.rsplit("_w", 1)[1]
        names[key] = (f"wotr GET /health, {n} uvicorn workers" if key.startswith("http") else
                      f"bare framework POST /ingest, {n} processes")
    for key, name in names.items():
        c = results["ceilings"].get(key)
        if not _ok(c):
            out.append({"key": key, "ceiling": name, "value": None, "unit": "", "how": "not measured", "cpu": ""})
            continue
        if "requests_per_s" in c:
            out.append({"key": key, "ceiling": name, "value": _median(c, "requests_per_s"), "unit": "requests/s",
                        "spread": _spread(c),
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
    plan = results["plan"]
    quick = results["mode"] == "quick"
    lines = [
        f"# wotr benchmark, {results['started']}",
        "",
        f"Mode **{results['mode']}**; {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}. Load average when measuring began: {la[0]:.2f} / {la[1]:.2f} / "
        f"{la[2]:.2f} (1/5/15 min); after: {results['load_average_after'][0]:.2f}. "
        f"{_quiet_text(results['quiet'])} Took {results['duration_s']:.0f} s.",
        "",
        "All traffic on 127.0.0.1; services from `wotr stack up` (Kafka, S3 server versitygw, PostgreSQL); "
        "ClickHouse is the in-process engine (chdb). Load and services share the same cores. Every headline figure "
        f"is the median of {plan['reps']} repetition(s), with its spread (min–max, n) where there were several.",
        "",
        "## Goals",
        "",
    ]
    if quick:
        lines += ["*Quick mode: one repetition of short loads, small ETL sizes: a smoke test of the harness; read the "
                  "statuses as the harness working, not as the figures.*", ""]
    lines += ["| goal | measured | target | status |", "| --- | --- | --- | --- |"]
    goal_rows = goals(results)
    for g in goal_rows:
        lines.append(f"| {g['goal']} | {g['measured']} | {g['target']} | **{g['status']}** |")
    notes = [g for g in goal_rows if g["note"]]
    if notes:
        lines += [""] + [f"- *{g['goal']}*: {g['note']}" for g in notes]
    lines += [""] + _http_table(results)
    lines += _scale_table(results)
    lines += _overload_table(results)
    lines += _edge_cost_table(results)
    lines += _etl_table(results)
    lines += _memory_table(results)
    lines += _generator_table(results)
    lines += ["", "## Hops beside their ceilings", "",
              "| hop | figure | bounding ceiling (per event) | fraction | target | status |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        frac = f"{r['fraction']:.0%}" if r["fraction"] is not None else "—"
        lines.append(f"| {r['hop']} | {r['figure']} | {r['ceiling']} | {frac} | {r['target']} | **{r['status']}** |")
    lines += ["", "Notes per row:", ""]
    for r in rows:
        if r["note"]:
            lines.append(f"- *{r['hop']}*: {r['note']}")
    lines += ["", "## Ceilings (same run)", "", "| ceiling | rate | how | CPU cores used |", "| --- | --- | --- | --- |"]
    for c in _ceiling_rows(results):
        rate = f"{c['spread']} {c['unit']}" if c.get("spread") else f"{_num(c['value'])} {c['unit']}"
        lines.append(f"| {c['ceiling']} | {rate} | {c['how']} | {c['cpu']} |")
    if chart:
        lines += ["", f"![throughput and latency]({chart})"]
    details = []
    for key, r in results["hops"].items():
        runs = _runs(r) if _ok(r) else []
        for k, run in enumerate(runs, 1):
            tag = f"`{key}`" + (f" run {k}" if len(runs) > 1 else "")
            if "events_per_s" in run:
                l = run["latency_ms"]
                details.append(f"- {tag}: {_num(run['requests_per_s'], 1)} req/s, {run['requests']:,} requests, "
                               f"{run['errors']} errors (status {run['status_errors']}, timeouts {run['timeouts']}); wrk "
                               f"latency (closed loop) p50 {l['p50']:.1f} p99 {l['p99']:.1f} max {l['max']:.1f} ms; CPU: "
                               f"server {run['cpu'].get('server_cores', 0):.2f}, wrk {run['generator_cpu_cores']:.2f}, "
                               f"machine {run['cpu']['machine_busy_cores']:.2f} cores")
            elif "offered_rate" in run:
                l, sv = run["latency_ms"], run["service_ms"]
                details.append(f"- {tag}: {run['ok']:,}/{run['requests']:,} ok at {_num(run['achieved_rate'])}/s; "
                               f"latency from due time p50 {_num(l.get('p50'), 1)} p99 {_num(l.get('p99'), 1)} p99.9 "
                               f"{_num(l.get('p99.9'), 1)} max {_num(l.get('max'), 1)} ms; service time p99 "
                               f"{_num(sv.get('p99'), 1)} ms; errors {run['errors'] or 'none'}; "
                               f"{run['connections_opened']} connections; generator {run['generator_cpu_cores']:.2f} "
                               f"cores ({run['generator_cpu_s']:.1f} s CPU); server "
                               f"{run['cpu'].get('server_cores', 0):.2f} cores")
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
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    lines += ["", "## Clean-up", ""] + [f"- {k}: {v}" for k, v in (results.get("cleanup") or {}).items()]
    lines += ["", "Reproduce: `make bench` (or `.venv/bin/python -m bench`); `--quick` for a smoke test, "
              "`--profile` to add py-spy profiles, `--ingest-queue-max N` for the overload phase's queue bound. "
              "See docs/performance.md.", ""]
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
    # The measurements first, so that a rendering bug loses nothing (`rerender` writes the rest again).
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    results.pop("notes", None)
    rows = figures(results)
    results["figures"] = rows
    try:
        png = chart(results, rows, out / "chart.png")
    except Exception as e:  # the tables matter more than the picture
        results.setdefault("notes", []).append(f"no chart: {type(e).__name__}: {e}"[:300])
        png = ""
    if png is None:  # not a failed measurement: the report has every figure without it
        results.setdefault("notes", []).append("no chart: matplotlib is not installed (`make bench` installs the "
                                               "`bench` extra)")
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
