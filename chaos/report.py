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
        f"| refused (no success before the client gave up) | {r.refused} ({r.refused_absent} absent everywhere, "
        f"{r.refused_present} present exactly once, {len(r.refused_partial)} partial) |",
        f"| dead letters on the topic (cumulative) | {r.dead_letters} |",
        "",
        f"Attempts by outcome: {statuses or 'none'}.",
        "",
    ]
    if r.errors:
        out += ["Most frequent error answers: " + "; ".join(f"{n} x `{text}`" for text, n in r.errors.items()) + ".", ""]
    if r.canaries:
        refused = r.canaries.get("refused") or []
        out += [f"Canaries: {r.canaries.get('accepted', 0)} accepted"
                + (f", {len(refused)} without a success (counted as refused: {', '.join(refused[:5])})" if refused else "")
                + ".", ""]
    if r.checks:
        out += ["Checks:", ""] + [f"- {'ok' if c['ok'] else '**FAILED**'}: {c['name']} ({c['detail']})"
                                  for c in r.checks] + [""]
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
        "- Its own native stack (`wotr_testing.stack` with `WOTR_STACK_HOME=~/.local/share/wotr-chaos` and "
        "`WOTR_STACK_PORT_OFFSET=20000`, sharing the default stack's download cache): Kafka, the S3 server "
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
            f"| drained in | {replay.get('drain_seconds')} s |",
            "",
        ]
    if summary.get("final_exits"):
        lines += ["Exit statuses of the processes stopped with SIGTERM at the end of the run: "
                  + ", ".join(f"{role} {status}" for role, status in summary["final_exits"]) + ".", ""]
    lines += ["## Scenarios in detail", ""]
    for r in results:
        lines += _detail(r)
    return "\n".join(lines).rstrip() + "\n"
