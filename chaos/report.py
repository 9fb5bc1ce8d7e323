"""The chaos run's report: docs/reliability.md (full run) or <workdir>/report.md."""

from __future__ import annotations

from typing import Any


def _secs(value: float | None) -> str:
    return "not recovered" if value is None else f"{value:.1f} s"


def _row(r: Any) -> str:
    raw = f"{r.raw_duplicates} ({100 * r.raw_duplicates / r.loaded_ids:.2f} %)" if r.loaded_ids else "0"
    if r.error and not r.accepted:
        return f"| `{r.slug}` | {r.fault} | - | - | - | - | - | - | - | {r.error[:300]} |"
    refused = f"{r.refused}: {r.refused_absent} absent, {r.refused_present} present once"
    if r.refused_partial:
        refused += f", **{len(r.refused_partial)} partial**"
    verdict = "FAILED" if r.failed else "ok"
    return (f"| `{r.slug}` | {r.fault} | {r.accepted} | {len(r.lost)} | {len(r.duplicated)} | {raw} | "
            f"{r.published_twice} | {_secs(r.recovery)} | {r.served_503} | {refused} · {verdict} |")


HEADER = ("| scenario | fault | accepted | lost | duplicated after dedupe | raw duplicates before dedupe | "
          "published more than once | time to recover | 503s served | refused (never a success) · verdict |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")


def table(results: list[Any]) -> str:
    return "\n".join([HEADER, *(_row(r) for r in results)])


def _detail(r: Any) -> list[str]:
    out = [f"### `{r.slug}`: {r.fault}", "", f"{r.how}.", ""]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items(), key=lambda kv: (-kv[1], kv[0])))
    out += [
        "| figure | value |",
        "| --- | ---: |",
        f"| events accepted (202/200/207 item, canaries included) | {r.accepted} |",
        f"| lost | {len(r.lost)} |",
        f"| duplicated after dedupe | {len(r.duplicated)} |",
        f"| raw duplicate ClickHouse rows before dedupe | {r.raw_duplicates} of {r.loaded_ids + r.raw_duplicates} |",
        f"| ids published more than once on the topic (extra messages) | {r.published_twice} ({r.extra_messages}) |",
        f"| fault held | {r.fault_held:.1f} s |",
        f"| time to recover (from the fault's end to a canary end to end) | {_secs(r.recovery)} |",
        f"| drained (outbox empty, group caught up) after the load in | "
        f"{'not drained' if r.drain is None else f'{r.drain:.1f} s'} |",
        f"| requests / retries | {r.requests} / {r.retries} |",
        f"| 503s served | {r.served_503} |",
        f"| events of publishes that failed in the API, left to the relay (its log; while its breaker is open "
        f"it skips the bus without a line) | {r.deferred} |",
        f"| refused (no success before the client gave up) | {r.refused} ({r.refused_absent} absent everywhere, "
        f"{r.refused_present} present exactly once, {len(r.refused_partial)} partial) |",
        f"| dead letters on the topic (cumulative) | {r.dead_letters} |",
        "",
        f"Attempts by outcome: {statuses or 'none'}.",
        "",
    ]
    if r.deferred_why:
        out += ["Why the API's publishes failed: " + "; ".join(f"{n} x `{text}`" for text, n in r.deferred_why.items())
                + ".", ""]
    if r.errors:
        out += ["Most frequent error answers: " + "; ".join(f"{n} x `{text}`" for text, n in r.errors.items()) + ".", ""]
    if r.canaries:
        refused = r.canaries.get("refused") or []
        out += [f"Canaries: {r.canaries.get('accepted', 0)} accepted"
                + (f", {len(refused)} without a success (counted as refused: {', '.join(refused[:5])})" if refused else "")
                + ".", ""]
    if r.checks:
        def mark(c: dict) -> str:
            return "ok" if c["ok"] else ("**finding** (a known gap, not counted as a failure)" if c["finding"]
                                         else "**FAILED**")

        out += ["Checks:", ""] + [f"- {mark(c)}: {c['name']} ({c['detail']})" for c in r.checks] + [""]
    if r.notes:
        out += ["What happened:", ""] + [f"- {n}" for n in r.notes] + [""]
    if r.exits:
        out += ["Process exits: " + ", ".join(f"{role} {status} ({how})" for role, status, how in r.exits) + ".", ""]
    if r.lost:
        out += ["Lost ids (first 20): " + ", ".join(f"`{i}` ({s})" for i, s in list(r.lost.items())[:20]), ""]
    if r.duplicated:
        out += ["Duplicated ids (first 20): " + ", ".join(f"`{i}` ({s})" for i, s in list(r.duplicated.items())[:20]), ""]
    if r.refused_partial:
        out += ["Refused ids present only in part (first 20): "
                + ", ".join(f"`{i}` ({s})" for i, s in list(r.refused_partial.items())[:20]), ""]
    if r.conflicts:
        out += ["409 conflicts on a same-content retry (a bug): " + ", ".join(f"`{i}`" for i in r.conflicts), ""]
    if r.error:
        out += [f"Error: {r.error}", ""]
    return out


def render(results: list[Any], summary: dict) -> str:
    m = summary.get("machine", {})
    rates = summary.get("rates", {})
    failed = [r for r in results if r.failed]
    lines = [
        "# Reliability: the fault matrix under load",
        "",
        f"Figures of a real `{'python -m chaos --quick' if summary.get('mode') == 'quick' else 'make chaos'}` run "
        f"(`python -m chaos`, package `chaos/`), started {summary.get('started')}, "
        f"{summary.get('seconds', 0):.0f} s in all, on {m.get('cpus')} CPUs ({m.get('cpu')}), "
        f"{m.get('memory_gib')} GiB, Linux {m.get('kernel')}, Python {m.get('python')}. "
        f"Verdict: **{'FAILED: ' + ', '.join(r.slug for r in failed) if failed else 'nothing accepted was lost or duplicated after dedupe'}**.",
        "",
        "## How it runs",
        "",
        f"- Its own native stack (`wotr_testing.stack` with `WOTR_STACK_HOME={summary.get('stack_home', '~/.local/share/wotr-chaos')}` and "
        f"`WOTR_STACK_PORT_OFFSET={summary.get('port_offset', 20000)}`, sharing the default stack's download cache): Kafka, the S3 server "
        "(its data directory on a 512 MiB tmpfs of its own) and PostgreSQL. The default stack is never touched.",
        "- wotr on the local profile as separate processes, in one namespace (topic with 3 partitions, bucket, "
        "PostgreSQL schema): `wotr serve --api-only`, `wotr consume` twice in one group (each with its own "
        "in-process ClickHouse engine directory), `wotr relay` (grace 5 s, lease 60 s).",
        f"- Open-loop load per scenario: {rates.get('single_rate', 0):g} single events/s (`POST /ingest`) and "
        f"{rates.get('batch_rate', 0):g} batches/s of {rates.get('batch_size', 0)} (`POST /ingest/batch`), every "
        "event with a client id. Like an SDK, a request is retried with the same body (same ids, same content) on a "
        "timeout (15 s), a 5xx or a failed or reset connection, with exponential backoff (Retry-After honoured, "
        "at most 3 s), until 60 s after the load's last request was due; a 4xx is final.",
        "- The fault is injected 8 s into the load (6 s in `--quick`). What the harness kills it restarts at once, "
        "as a supervisor would; a wotr process that ends by itself is restarted too, and reported.",
        "- **Time to recover**: from the moment the fault ended (killed component restarted, stopped one started, disk "
        "freed, directory writable again) until a canary event sent then was answered 202, published, and its "
        "partition's offset committed by the consumer group.",
        "- After the load's last answer the pipeline is drained (no `stored` row left, consumer group lag 0), "
        "the consumers are stopped (each holds its engine) and every id of the scenario is reconciled: exactly one "
        "metadata row, `published`, its archived bytes (object and line) matching the row's SHA-256 "
        "(`wotr_domain.archive.event_bytes`), at least one ClickHouse row and at most one per engine with FINAL, "
        "deduplicated by id across the engines (a rebalance can load an event in two consumers' engines, as both "
        "would write to one table on a ClickHouse server). At the end `wotr etl` writes the curated Parquet, read "
        "back with pyarrow: exactly one row per accepted id.",
        "- **Lost**: an accepted id missing from any of those stages. **Duplicated after dedupe**: more than one "
        "metadata row, more than one row with FINAL in one engine, or more than one Parquet row. **Raw duplicates**: "
        "ClickHouse rows without FINAL, over all engines, beyond one per id (a lower bound: background merges may "
        "already have collapsed some).",
        "- **Refused**: ids the client never got a success for (a final 4xx, or no 2xx before it gave up); each must be "
        "absent everywhere or present exactly once (an SDK retry would then find it as a duplicate).",
        "",
        "## Results",
        "",
        table(results),
        "",
        f"In all: {sum(r.accepted for r in results)} accepted events in {len(results)} scenarios, "
        f"{sum(len(r.lost) for r in results)} lost, {sum(len(r.duplicated) for r in results)} duplicated after dedupe "
        f"(goal: 0 and 0); {sum(r.raw_duplicates for r in results)} raw duplicate ClickHouse rows before dedupe, "
        f"{sum(r.published_twice for r in results)} events published more than once, "
        f"{sum(r.served_503 for r in results)} answers 503.",
        "",
    ]
    etl = summary.get("etl")
    if etl:
        lines += [f"`wotr etl` over the run's archive: exit {etl['status']} in {etl['seconds']} s; {etl['summary']}", ""]
    replay = summary.get("replay")
    if replay:
        lines += [
            "### Replay from the archive",
            "",
            "After the matrix, `wotr replay --since <yesterday>` republished the whole archive (every event verified "
            "against its checksum) into the topic, with both consumers running:",
            "",
            "| figure | value |",
            "| --- | ---: |",
            f"| replay | exit {replay['status']}, {replay['summary']} |",
            f"| accepted ids over the run | {replay.get('accepted')} |",
            f"| lost after the replay | {replay.get('lost')} |",
            f"| duplicated after dedupe after the replay | {replay.get('duplicated_after_dedupe')} |",
            f"| ClickHouse rows of those ids before dedupe | {replay.get('raw_rows')} |",
            f"| drained in | {_secs(replay.get('drain_seconds'))} |",
            "",
        ]
    if summary.get("final_exits"):
        lines += ["Exit statuses of the processes stopped with SIGTERM at the end of the run: "
                  + ", ".join(f"{role} {status}" for role, status in summary["final_exits"]) + ".", ""]
    lines += _shutdown(results)
    lines += _findings(results)
    lines += alerts()
    lines += ["## Scenarios in detail", ""]
    for r in results:
        lines += _detail(r)
    return "\n".join(lines).rstrip() + "\n"


def normalise(text: str) -> str:
    """An error answer without what differs between requests (object keys, ids, numbers of events)."""
    import re

    text = re.sub(r"raw/dt=\S+", "<object>", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    return text


# What a frequent 503 means, by the first words of its detail.
CAUSES = {
    "api is unavailable": (" The API sheds load (`the writes are behind`: an event queued longer than the 50 ms "
                           "bound) while Kafka is down or restarting: a flush waits for the bus's delivery report, up "
                           "to its 10 s timeout, before the publish breaker opens and the publish is left to the relay "
                           "(the events stay `stored`); the flushes in progress meanwhile hold the group commit's "
                           "slots and what queues behind them is refused. The design accepts events without the bus; "
                           "during the first seconds of an outage clients get 503 + Retry-After instead."),
    "object store is unavailable": (" The S3 server refused writes (its filesystem full: `InsufficientStorage`): "
                                    "503 with Retry-After; the retries were accepted once the space was back."),
}


def _all_checks(results: list[Any]) -> list[tuple[str, dict]]:
    return [(r.slug, c) for r in results for c in r.checks]


def _shutdown(results: list[Any]) -> list[str]:
    checks = _all_checks(results)
    term = [(slug, c) for slug, c in checks if c["name"] == "every request the API had taken when SIGTERM came is answered"]
    reset = [(slug, c) for slug, c in checks if c["name"].startswith("no request in flight at SIGTERM is reset")]
    api_exit = [(slug, c) for slug, c in checks if c["name"] == "API exits after SIGTERM"]
    consumers = [c for _, c in checks if c["name"].startswith("consume-") and "SIGTERM" in c["name"]]
    relays = [c for _, c in checks if c["name"].startswith("relay-") and "SIGTERM" in c["name"]]
    lease = [(slug, c) for slug, c in checks if c["name"] == "the relay releases its lease on SIGTERM"]
    crashed = [(r.slug, role, status) for r in results for role, status, how in r.exits if how == "ended by itself"]
    refusals = [(r.slug, n) for r in results for n in r.notes if "refused to start" in n]

    def ok(cs: list[dict]) -> str:
        bad = [c for c in cs if not c["ok"]]
        return f"{len(cs) - len(bad)} of {len(cs)}"

    out = ["## Graceful shutdown and supervision", ""]
    if term or api_exit:
        detail = "; ".join(f"{c['detail']}" for _, c in term)
        exits = ", ".join(c["detail"] for _, c in api_exit)
        out += [f"- **API** (`wotr serve`), SIGTERM with requests in flight: uvicorn closes the listening socket "
                f"(a new connection is refused; the client retries it), finishes what the group commit took and "
                f"answers every request in flight, then exits. Measured: {detail or 'not run'}; exit {exits or '-'} "
                "(-15: after its graceful shutdown uvicorn re-raises the SIGTERM, `wotr_apps/runners.py`). "
                "Killed with SIGKILL instead, the requests in flight get no answer and their retries (same ids) "
                "are answered 200 with the first receipt or accepted anew: no loss, no second event."]
        for slug, c in reset:
            out += [f"  Not every request the *client* had in flight is answered (`{slug}`): {c['detail']}. uvicorn's "
                    "shutdown closes a keep-alive connection on which no request is in progress, and a request that "
                    "is on its way on that connection is lost unread: for the client a reset, which an SDK retries "
                    "(same id). Answering it would need the server to read what is already on a connection before "
                    "closing it (`wotr_apps/api/server.py`), or clients to retry a reset request, as this one does."]
    if consumers:
        out += [f"- **Consumer** (`wotr consume`), SIGTERM: it stops polling, loads and commits the batch in hand or "
                f"leaves it uncommitted (the bus delivers it again), and exits 0: {ok(consumers)} SIGTERM stops in "
                "this run exited 0 (both consumers are stopped after every scenario, and one leaves mid-load in "
                "`consumer-rebalance`); the reconciliation found nothing lost behind them."]
    if relays:
        out += [f"- **Relay** (`wotr relay`), SIGTERM: it finishes the batch in hand (published and marked, or its "
                f"publish failed and its lease released) and exits 0 ({ok(relays)} stops exited 0)."]
    for slug, c in lease:
        verdict = "released" if c["ok"] else "**not** released (**failed**)"
        out += [f"  Its lease is {verdict} (`{slug}`): {c['detail']}. A batch whose publish fails gives its lease "
                "back (`MetadataRepo.release`) before the relay backs off, and a relay that stops with a batch in "
                "hand releases its claim, so the rows can be claimed again at once; only a release that cannot reach "
                "PostgreSQL leaves them to wait for the lease (60 s) to expire."]
    out += ["- **A worker loop that dies** ends its process with status 70 (`EXIT_WORKER_CRASHED`, unit-tested); "
            "the harness supervises like `Restart=on-failure`: "
            + ("; ".join(f"`{slug}`: {role} ended by itself with status {status}" for slug, role, status in crashed)
               if crashed else "no wotr process ended by itself in this run") + "."]
    for slug, note in refusals[:3]:
        out += [f"- `{slug}`: {note} (a process that exits before it is ready is started again by the harness, "
                "as by a supervisor; `wotr consume` itself waits for Kafka at start-up instead of exiting)."]
    return out + [""]


def _findings(results: list[Any]) -> list[str]:
    out = ["## Findings", ""]
    items = []
    for r in results:
        if r.lost:
            first = list(r.lost.items())[:5]
            items.append(f"**`{r.slug}`: {len(r.lost)} accepted events lost**: "
                         + ", ".join(f"`{i}` ({stage})" for i, stage in first))
        if r.duplicated:
            first = list(r.duplicated.items())[:5]
            items.append(f"**`{r.slug}`: {len(r.duplicated)} accepted events duplicated after dedupe**: "
                         + ", ".join(f"`{i}` ({what})" for i, what in first))
        if r.refused_partial:
            items.append(f"**`{r.slug}`: {len(r.refused_partial)} refused events present only in part**")
        if r.error:
            items.append(f"**`{r.slug}`: {r.error}**")
        for c in r.checks:
            if not c["ok"]:
                items.append(f"`{r.slug}`: {c['name']}: {c['detail']}"
                             + (" (a known gap, not counted as a failure)" if c["finding"] else " (**failed**)"))
    leased = [r for r in results if r.published_twice and r.drain is not None and r.drain > 30]
    for r in leased:
        items.append(f"`{r.slug}`: {r.published_twice} events published twice and {r.drain:.0f} s to drain: rows "
                     "claimed by a relay that died (or whose PostgreSQL died) before marking them wait for their "
                     "60 s lease, then are published again; the table deduplicates them (0 after dedupe).")
    by_cause: dict[str, list[tuple[str, int, int]]] = {}
    for r in results:
        if r.served_503 >= 100 and r.errors:
            merged: dict[str, int] = {}
            for text, n in r.errors.items():
                merged[normalise(text)] = merged.get(normalise(text), 0) + n
            cause = max(merged.items(), key=lambda kv: kv[1])[0]
            by_cause.setdefault(cause, []).append((r.slug, r.served_503, r.deferred))
    for cause, rows in by_cause.items():
        items.append(f"503 `{cause.removeprefix('503 ')}` was the most frequent answer in "
                     + ", ".join(f"`{slug}` ({n} answers 503" + (f", failed publishes of {d} events left to the relay" if d else "")
                                 + ")" for slug, n, d in rows)
                     + ". The client retried them (same ids): nothing was lost, it cost time."
                     + (CAUSES.get(cause.split(": ", 1)[-1].split(":")[0], "") if ":" in cause else ""))
    if not items:
        items.append("None: every accepted event was exactly once everywhere in every scenario.")
    return out + [f"- {i}" for i in items] + [""]


ALERTS = [
    ("a wotr process killed or hung", "`WotrTargetDown` (`up == 0` for 1 m)"),
    ("a process scraped without its sampled metrics, or a job with no target at all",
     "`WotrMetricAbsent` (up, but no `kafka_status`), `WotrTargetMissing` (`absent(up{job=...})`)"),
    ("Kafka, the S3 server, PostgreSQL or ClickHouse down",
     "`WotrBusDown`, `WotrObjectStoreDown`, `WotrMetadataStoreDown`, `WotrAnalyticsDown`"),
    ("503s (a store down, load shed)", "`WotrHttp5xxRateHigh` (more than 5 % of answers 5xx for 5 m)"),
    ("the outbox not draining (bus down, relays down, leases waiting)",
     "`WotrOutboxBacklogOld` (not empty at any evaluation for 15 m), `WotrOutboxBacklogGrowing`"),
    ("dead letters, also the first ones after a consumer (re)start",
     "`WotrDeadLetters` (each target's count is 0 while it has no counter, so a counter that appears at 3 "
     "is an increase of 3)"),
    ("archived bytes missing or not matching their checksum", "`WotrArchiveFault` (relay), `WotrEtlRejected` "
     "(the last ETL run rejected rows: checksum mismatches or invalid events)"),
]


def alerts() -> list[str]:
    out = ["## Alerts that notice these faults", "",
           "Rules in `deployment/prometheus/rules/wotr.yml`, each with a promtool unit test in "
           "`deployment/prometheus/tests/wotr_test.yml` (`promtool test rules`):", "",
           "| what goes wrong | alert |", "| --- | --- |"]
    out += [f"| {what} | {alert} |" for what, alert in ALERTS]
    out += ["", "`wotr replay` exports no metric (it is a command, not a scraped process): a replay that met "
            "missing or mismatching bytes says so in its summary line and exits 1.", ""]
    return out
