"""`python -m chaos [--quick] [--only SLUG ...]`: run the fault matrix and report.

The run: a fresh chaos stack (its own home and ports; see `chaos.stack`), one namespace
(topic with 3 partitions, bucket, schema) for the whole run, wotr's API, two consumers
and a relay as separate processes. Per scenario: open-loop load with ids prefixed by the
scenario, the fault injected `fault_at` seconds in, the time to recover measured with
canaries, the load's last answer awaited, the pipeline drained (outbox empty, consumer
group caught up), the consumers stopped (each holds its engine) and the scenario's ids
reconciled over PostgreSQL, the archive and the ClickHouse engines. At the end `wotr etl`
writes the curated Parquet, which is reconciled too, and (full run) `wotr replay`
republishes the whole archive, after which every accepted event must still be exactly
one row after dedupe.

Exit status 0 only when no accepted event was lost or duplicated after dedupe in any
scenario and every check (graceful shutdowns, the replay) passed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import report
from .load import Load
from .observe import Observer
from .pipeline import WOTR, Pipeline
from .reconcile import Snapshot, Verdict, read_engines, read_metadata_and_archive, read_parquet, verdict
from .scenarios import BASE_ROLES, FULL, QUICK, Ctx, Scenario
from .stack import DEFAULT_HOME, DEFAULT_OFFSET, ChaosStack, claim_slot, umount_under
from .util import say, wait_until

REPO = Path(__file__).resolve().parents[1]
RATES = {"single_rate": 10.0, "batch_rate": 2.0, "batch_size": 30}


@dataclass
class Result:
    slug: str
    fault: str
    how: str
    duration: float
    accepted: int = 0
    refused: int = 0
    refused_absent: int = 0
    refused_present: int = 0
    refused_partial: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    duplicated: dict[str, str] = field(default_factory=dict)
    raw_duplicates: int = 0
    loaded_ids: int = 0
    published_twice: int = 0  # ids with more than one message on the topic
    extra_messages: int = 0  # messages beyond one per id
    recovery: float | None = None
    fault_held: float = 0.0
    served_503: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    conflicts: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # the most frequent non-2xx answers
    deferred: int = 0  # events whose publish the API left to the relay (its log)
    deferred_why: dict[str, int] = field(default_factory=dict)
    canaries: dict = field(default_factory=dict)
    drain: float | None = None
    dead_letters: int = 0
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    exits: list[tuple] = field(default_factory=list)
    error: str | None = None
    accepted_ids: list[str] = field(default_factory=list, repr=False)
    refused_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or self.error or self.conflicts or self.refused_partial
                    or any(not c["ok"] and not c["finding"] for c in self.checks))


class Supervisor:
    """Restarts a wotr process that ended by itself (as systemd's Restart=on-failure would)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-supervisor", daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for role, status in self.ctx.p.crashed():
                self.ctx.note(f"{role} ended by itself with exit status {status}; restarted by the supervisor")
                try:
                    self.ctx.restart(role)
                except Exception as e:  # noqa: BLE001
                    self.ctx.note(f"{role} could not be restarted: {e}")


def ensure_running(p: Pipeline, roles: tuple[str, ...] = BASE_ROLES) -> None:
    for role in roles:
        proc = p.procs.get(role)
        if proc is None or not proc.alive():
            p.procs.pop(role, None)
            p.start(role)


_DEFERRED = re.compile(r"publish deferred to the outbox relay for (\d+) event\(s\): (.*)$")


def deferred_publishes(log: Path, start: int) -> tuple[int, dict[str, int]]:
    """Events whose publish the API left to the relay, from its log since `start`, and why."""
    if not log.exists():
        return 0, {}
    with open(log, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode(errors="replace")
    total, why = 0, Counter()
    for line in text.splitlines():
        match = _DEFERRED.search(line)
        if match:
            total += int(match.group(1))
            why[re.sub(r"\d+ of \d+ ", "", match.group(2))[:120]] += int(match.group(1))
    return total, dict(why.most_common(3))


def dead_letters(obs: Observer) -> int:
    from confluent_kafka import TopicPartition

    try:
        consumer = obs._kafka()
        total = 0
        for part in range(3):
            low, high = consumer.get_watermark_offsets(TopicPartition(f"{obs.p.topic}.dlq", part), timeout=3)
            total += max(high - low, 0)
        return total
    except Exception:  # noqa: BLE001 - no dead-letter topic yet
        return 0


def drain(ctx: Ctx, timeout: float) -> float | None:
    """Wait until the outbox is empty and the group has committed everything; seconds taken."""
    began = time.monotonic()
    try:
        wait_until(lambda: ctx.obs.stored() == 0 and ctx.obs.lag() == 0, timeout, "the pipeline to drain", interval=0.5)
    except TimeoutError:
        ctx.note(f"not drained within {timeout:.0f}s: {ctx.obs.stored()} events stored, lag {ctx.obs.lag()}")
        return None
    return time.monotonic() - began


def run_scenario(scenario: Scenario, stack: ChaosStack, p: Pipeline, obs: Observer, quick: bool) -> Result:
    say(f"scenario {scenario.slug}: {scenario.fault}: {scenario.how}")
    result = Result(scenario.slug, scenario.fault, scenario.how, scenario.duration)
    stack.ensure_up()
    ensure_running(p)
    load = Load(p.url, f"{scenario.slug.replace('+', '.')}-", duration=scenario.duration, retry_until=60.0,
                attempt_timeout=15.0, **RATES)
    ctx = Ctx(stack, p, load, obs, quick)
    exits_before = len(p.exits)
    start_offsets = obs.end_offsets()
    serve_log = p.log_path("serve")
    log_from = serve_log.stat().st_size if serve_log.exists() else 0
    canaries_before = (len(obs.canaries), len(obs.canary_refused))
    load.start()
    with Supervisor(ctx):
        time.sleep(scenario.fault_at)
        t_inject = time.monotonic()
        try:
            t_end = scenario.inject(ctx)
        except Exception as e:  # noqa: BLE001 - reported; the run goes on
            result.error = f"injection failed: {e!r}"
            say(traceback.format_exc())
            t_end = time.monotonic()
        result.fault_held = t_end - t_inject
        stack.ensure_up()
        ensure_running(p)
        result.recovery = obs.time_to_recover(t_end, limit=240.0)
        say(f"  recovered in {result.recovery:.1f}s" if result.recovery is not None else "  did not recover")
        load.join(timeout=scenario.duration + 60 + 120)
        if scenario.after is not None:
            scenario.after(ctx)
        ensure_running(p)
        result.drain = drain(ctx, 240.0)
        end_offsets = obs.end_offsets()
    # reconcile: the consumers hold their engines
    for role in sorted(r for r in list(p.procs) if r.startswith("consume-")):
        ctx.graceful_stop(role, "after the scenario")
    ledger = load.ledger
    accepted = ledger.ids("accepted") | set(obs.canaries[canaries_before[0]:])
    refused = (ledger.ids("refused") | ledger.ids("pending") | set(obs.canary_refused[canaries_before[1]:])) - accepted
    snap = Snapshot()
    read_metadata_and_archive(p, obs, accepted | refused, snap)
    read_engines(p, accepted | refused, snap)
    v = verdict(accepted, refused, snap, curated=False)
    fill(result, v)
    if start_offsets is not None and end_offsets is not None:
        keys = obs.keys_between(start_offsets, end_offsets)
        mine = [keys[i] for i in accepted | refused if keys[i] > 1]
        result.published_twice, result.extra_messages = len(mine), sum(n - 1 for n in mine)
    else:
        ctx.note("the topic's offsets were unknown: messages per id not counted")
    result.accepted_ids, result.refused_ids = sorted(accepted), sorted(refused)
    result.served_503 = ledger.statuses.get("503", 0)
    result.statuses = dict(ledger.statuses)
    result.requests, result.retries = ledger.requests, ledger.retries
    result.conflicts = ledger.conflicts[:20]
    result.errors = dict(ledger.errors.most_common(8))
    result.canaries = {"accepted": len(obs.canaries) - canaries_before[0],
                       "refused": obs.canary_refused[canaries_before[1]:]}
    result.dead_letters = dead_letters(obs)
    result.deferred, result.deferred_why = deferred_publishes(serve_log, log_from)
    result.notes, result.exits = ctx.notes, p.exits[exits_before:]
    result.checks = [asdict(c) for c in ctx.checks]
    say(f"  {scenario.slug}: accepted {result.accepted}, lost {len(result.lost)}, duplicated {len(result.duplicated)}, "
        f"raw duplicates {result.raw_duplicates}, published twice {result.published_twice}, refused {result.refused} ({result.refused_absent} absent, "
        f"{result.refused_present} present once), 503s {result.served_503}")
    for event_id, stage in list(result.lost.items())[:10]:
        say(f"    LOST {event_id}: {stage}")
    for event_id, what in list(result.duplicated.items())[:10]:
        say(f"    DUPLICATED {event_id}: {what}")
    return result


def fill(result: Result, v: Verdict) -> None:
    result.accepted, result.refused = v.accepted, v.refused
    result.refused_absent, result.refused_present = v.refused_absent, v.refused_present
    result.refused_partial = dict(list(v.refused_partial.items())[:50])
    result.lost = dict(v.lost)
    result.duplicated = dict(v.duplicated)
    result.raw_duplicates, result.loaded_ids = v.raw_duplicates, v.loaded_ids


def run_tool(p: Pipeline, args: list[str], timeout: float) -> tuple[int, str]:
    out = subprocess.run([*WOTR, *args], env=p.env("tool"), cwd=p.workdir, capture_output=True, text=True,
                         timeout=timeout)
    (p.workdir / f"{args[0]}.log").write_text(out.stdout + "\n" + out.stderr)
    return out.returncode, out.stdout + out.stderr


def finish(results: list[Result], p: Pipeline, obs: Observer, quick: bool, summary: dict, etl: bool = True) -> None:
    """ETL, curated Parquet reconciliation, and (full run) the replay of the whole archive."""
    if not etl:
        summary["etl"] = {"status": "skipped", "seconds": 0, "summary": "not run (--skip-etl)"}
        for r in results:
            r.notes.append("curated Parquet not checked (--skip-etl)")
        return
    since = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    say("wotr etl: raw archive -> curated Parquet")
    began = time.monotonic()
    code, text = run_tool(p, ["etl", "--since", since], timeout=900)
    summary["etl"] = {"status": code, "seconds": round(time.monotonic() - began, 1),
                      "summary": next((l for l in text.splitlines() if l.startswith("done in")), text[-300:])}
    say(f"  etl exit {code}: {summary['etl']['summary']}")
    parquet = read_parquet(p) if code == 0 else None
    for r in results:
        if r.error and not r.accepted_ids:
            continue
        if parquet is None:
            r.error = (r.error or "") + " etl failed"
            continue
        for event_id in r.accepted_ids:
            if parquet[event_id] == 0:
                r.lost.setdefault(event_id, "not in the curated Parquet")
            elif parquet[event_id] > 1:
                r.duplicated.setdefault(event_id, f"{parquet[event_id]} Parquet rows")
        extra = [i for i in r.refused_ids if parquet[i] > 1]
        for event_id in extra:
            r.refused_partial[event_id] = f"{parquet[event_id]} Parquet rows"
    if quick:
        return
    # Replay the whole archive into the topic: every event comes again, verified against its
    # checksum; after dedupe each accepted event is still exactly one row.
    say("wotr replay: the whole archive, republished")
    ensure_running(p, ("consume-a", "consume-b"))
    began = time.monotonic()
    code, text = run_tool(p, ["replay", "--since", since, "--until", datetime.now(UTC).date().isoformat()],
                          timeout=900)
    line = next((l for l in text.splitlines() if l.startswith("replay:")), text[-300:])
    summary["replay"] = {"status": code, "seconds": round(time.monotonic() - began, 1), "summary": line}
    say(f"  replay exit {code}: {line}")
    ctx = Ctx(None, p, None, obs, quick)
    summary["replay"]["drain_seconds"] = drain(ctx, 300.0)
    for role in sorted(r for r in list(p.procs) if r.startswith("consume-")):
        p.stop(role)
    every = {i for r in results for i in r.accepted_ids}
    refused = {i for r in results for i in r.refused_ids}
    snap = Snapshot()
    read_engines(p, every | refused, snap)
    lost = [i for i in every if snap.raw_rows[i] == 0]
    doubled = [i for i in every if snap.final_max[i] > 1]
    summary["replay"].update({"accepted": len(every), "lost": len(lost), "duplicated_after_dedupe": len(doubled),
                              "raw_rows": sum(snap.raw_rows[i] for i in every), "notes": ctx.notes})
    ok = code == 0 and not lost and not doubled and "0 checksum mismatches, 0 missing" in line
    summary["replay"]["ok"] = ok
    say(f"  after the replay: {len(every)} accepted ids, {len(lost)} lost, {len(doubled)} duplicated after dedupe")


def prune_runs(runs: Path, keep: int) -> None:
    """Remove all but the last `keep` run directories (engines and logs of old runs)."""
    import shutil

    if runs.is_dir():
        for old in sorted(d for d in runs.iterdir() if d.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def machine() -> dict:
    import os

    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "cpu": model, "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def rerender(results_json: Path, report_path: Path) -> int:
    """The report of a finished run, rendered again from its results.json (same figures)."""
    data = json.loads(results_json.read_text())
    names = set(Result.__dataclass_fields__)
    results = [Result(**{k: v for k, v in r.items() if k in names}) for r in data["results"]]
    for r, raw in zip(results, data["results"]):
        r.exits = [tuple(e) for e in r.exits]
        if "loaded_ids" not in raw and not r.lost:  # results.json of a run before it was kept: all loaded
            r.loaded_ids = r.accepted + r.refused_present
    report_path.write_text(report.render(results, data["summary"]))
    say(f"report written to {report_path} from {results_json}")
    return 1 if any(r.failed for r in results) else 0


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the short form (a few scenarios, ~3-4 minutes; make test)")
    p.add_argument("--only", action="append", default=[], metavar="SLUG", help="run only this scenario (repeatable)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--stack-home", type=Path, help=f"the chaos stack's home (default {DEFAULT_HOME}, or "
                   f"{DEFAULT_HOME.name}-2, -3, -4 when another run holds it)")
    p.add_argument("--port-offset", type=int, help=f"its port offset (default {DEFAULT_OFFSET}, +1000 per slot)")
    p.add_argument("--workdir", type=Path, help="where the processes' logs and engines go (default: under the home)")
    p.add_argument("--report", type=Path, help="write the Markdown report here (full run default: docs/reliability.md)")
    p.add_argument("--budget", type=float, help="stop starting scenarios after this many seconds")
    p.add_argument("--keep-stack", action="store_true", help="leave the chaos stack running at the end")
    p.add_argument("--skip-etl", action="store_true", help="debugging: no ETL, no Parquet check, no replay")
    p.add_argument("--rerender", type=Path, metavar="RESULTS_JSON",
                   help="write the report again from a run's results.json (no run); with --report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    matrix = QUICK if args.quick else FULL
    if args.list:
        for s in FULL:
            print(f"{s.slug:<40} {s.fault}: {s.how}")
        return 0
    if args.only:
        known = {s.slug: s for s in ((FULL + QUICK) if args.quick else (QUICK + FULL))}
        unknown = [o for o in args.only if o not in known]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
        matrix = [known[o] for o in args.only]
    if args.rerender is not None:
        return rerender(args.rerender, args.report or REPO / "docs" / "reliability.md")
    budget = args.budget or (300.0 if args.quick else 1500.0)
    report_path = args.report or (None if args.quick or args.only else REPO / "docs" / "reliability.md")
    began = time.monotonic()
    started_at = datetime.now(UTC)
    signal.signal(signal.SIGTERM, _terminated)  # so that the cleanup below runs
    home, offset, _slot_lock = claim_slot(args.stack_home, args.port_offset)
    stack = ChaosStack(home, offset)
    workdir = args.workdir or stack.home / "runs" / started_at.strftime("%Y%m%dT%H%M%SZ")
    umount_under(stack.home / "runs")
    prune_runs(stack.home / "runs", keep=3)
    say(f"chaos stack: {stack.home} (port offset {stack.port_offset}); work dir {workdir}")
    summary_stack = {"stack_home": str(stack.home).replace(str(Path.home()), "~"), "port_offset": stack.port_offset}
    results: list[Result] = []
    summary: dict = {"started": started_at.isoformat(timespec="seconds"), "mode": "quick" if args.quick else "full",
                     "machine": machine(), "rates": RATES, **summary_stack}
    p = obs = None
    try:
        env = stack.fresh()
        p = Pipeline(workdir, env, f"chaos{uuid.uuid4().hex[:8]}")
        obs = Observer(p)
        say(f"namespace {p.name}: topic, bucket and schema; API on {p.url}")
        ensure_running(p)
        for scenario in matrix:
            if time.monotonic() - began > budget:
                say(f"budget of {budget:.0f}s spent: {scenario.slug} not run")
                r = Result(scenario.slug, scenario.fault, scenario.how, scenario.duration, error="not run: time budget spent")
                results.append(r)
                continue
            try:
                results.append(run_scenario(scenario, stack, p, obs, args.quick))
            except Exception as e:  # noqa: BLE001 - the next scenario still runs
                say(traceback.format_exc())
                results.append(Result(scenario.slug, scenario.fault, scenario.how, scenario.duration, error=repr(e)))
        final_exits = []
        for role in sorted(p.procs, key=lambda r: (r.startswith("serve"), r)):
            status = p.stop(role)
            final_exits.append((role, status))
        summary["final_exits"] = final_exits
        finish(results, p, obs, args.quick, summary, etl=not args.skip_etl)
    finally:
        if p is not None:
            p.stop_all()
            for engine in p.engine_dirs():
                subprocess.run(["umount", str(engine)], capture_output=True)
        if obs is not None:
            obs.close()
        if not args.keep_stack:
            stack.teardown()
    summary["seconds"] = round(time.monotonic() - began, 1)
    failed = [r for r in results if r.failed] or (["replay"] if summary.get("replay", {}).get("ok") is False else [])
    (workdir / "results.json").write_text(json.dumps(
        {"summary": summary, "results": [{k: v for k, v in asdict(r).items() if k not in ("accepted_ids", "refused_ids")}
                                         for r in results]}, indent=2, default=str))
    text = report.render(results, summary)
    (workdir / "report.md").write_text(text)
    if report_path is not None:
        report_path.write_text(text)
        say(f"report written to {report_path}")
    print(report.table(results))
    if failed:
        say(f"FAILED: {', '.join(r.slug if isinstance(r, Result) else r for r in failed)}")
        return 1
    say(f"passed: {len(results)} scenarios, nothing accepted lost or duplicated after dedupe ({summary['seconds']:.0f}s)")
    return 0
