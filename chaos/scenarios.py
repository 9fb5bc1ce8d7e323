"""The fault matrix: what each scenario breaks, how, and when it counts as ended.

Each injection runs while the load runs and returns the moment the fault ended (the
harness restarted what it killed, as a supervisor would at once, started what it
stopped, or gave back the disk or the permission); the time to recover is measured from
there. A process that ends by itself meanwhile (a worker loop that dies exits 70) is
restarted by the harness's supervision and reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .util import say, wait_until

BASE_ROLES = ("serve", "consume-a", "consume-b", "relay-1")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    finding: bool = False  # a known gap, reported with its figures; does not fail the run


@dataclass
class Ctx:
    """What an injection works with."""

    stack: Any  # ChaosStack
    p: Any  # Pipeline
    load: Any  # Load
    obs: Any  # Observer
    quick: bool
    paired: bool = False  # two faults at once: each injection waits less for its moment
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)
        say(f"  {text}")

    def check(self, name: str, ok: bool, detail: str, finding: bool = False) -> None:
        with self.lock:
            self.checks.append(Check(name, ok, detail, finding))
        verdict = "ok" if ok else ("FINDING" if finding else "FAILED")
        say(f"  check {verdict}: {name}: {detail}")

    def hold(self, full: float, quick: float) -> None:
        time.sleep(quick if self.quick else full)

    def crowd(self, burst: int = 30, singles: int = 10, batch: bool = True) -> int:
        """Make sure requests are in flight: wait for a batch request, add a burst of single
        events, wait until at least `singles` of them are in flight; returns how many are."""
        if batch:
            self.wait_in_flight(singles=0, batches=1, timeout=3)
        self.load.burst(burst)
        return self.wait_in_flight(singles=singles, batches=1 if batch else 0, timeout=3)

    def wait_in_flight(self, singles: int = 1, batches: int = 0, timeout: float = 10.0) -> int:
        """Wait until the load has at least this many requests in flight; returns how many."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s, b = self.load.in_flight["s"], self.load.in_flight["b"]
            if s >= singles and b >= batches:
                return s + b
            time.sleep(0.002)
        return self.load.in_flight["s"] + self.load.in_flight["b"]

    # -- processes -------------------------------------------------------------------------

    def restart(self, role: str, within: float = 150.0) -> None:
        """Start `role` again, retrying (as a supervisor would) while it refuses to start
        (e.g. `wotr relay` exits 3 while a dependency is down at start-up; `wotr consume`
        waits for Kafka instead, and is ready once Kafka answers)."""
        began = time.monotonic()
        failures: list[str] = []
        while True:
            try:
                self.p.start(role)
                break
            except Exception as e:  # noqa: BLE001 - a dependency still down: try again
                lines = [l for l in str(e).splitlines() if l.strip() and "librdkafka" not in l]
                failures.append(lines[-1][:200] if lines else repr(e)[:200])
                if time.monotonic() - began > within:
                    self.note(f"{role} could not be restarted within {within:.0f}s: {failures[-1]}")
                    raise RuntimeError(f"{role} could not be restarted") from e
                time.sleep(2)
        if failures:
            self.note(f"{role} refused to start {len(failures)} time(s) ({failures[-1]}); "
                      f"running after {time.monotonic() - began:.1f}s")

    def graceful_stop(self, role: str, what: str) -> int | None:
        began = time.monotonic()
        status = self.p.stop(role, timeout=60)
        took = time.monotonic() - began
        self.check(f"{role} exits cleanly on SIGTERM ({what})", status in (0, -signal.SIGTERM),
                   f"exit status {status} after {took:.1f}s")
        return status

    def leased(self) -> int | None:
        rows = self.obs.sql("SELECT count(*) FROM {schema}.event_metadata "
                            "WHERE status = 'stored' AND lease_until > statement_timestamp()")
        return None if rows is None else rows[0][0]

    def build_backlog(self, relays: tuple[str, ...], outage: float) -> None:
        """Stop the relays (SIGTERM) and Kafka for `outage` s, so the API leaves accepted
        events `stored`; then start Kafka again (the relays stay stopped)."""
        for relay in relays:
            if relay in self.p.procs:
                self.graceful_stop(relay, "with no lease held")
        self.stack.stop("kafka")
        time.sleep(outage)
        self.stack.start("kafka")
        time.sleep(0.5)
        self.note(f"backlog built: {self.obs.stored()} events stored (Kafka stopped {outage:.0f}s, relays stopped)")


# -- single faults ---------------------------------------------------------------------------


def api_kill9(ctx: Ctx) -> float:
    n = ctx.crowd()
    t = time.monotonic()
    ctx.p.kill9("serve")
    ctx.note(f"API killed with SIGKILL, {n} requests in flight (a batch among them)")
    ctx.restart("serve")
    return t


def api_sigterm(ctx: Ctx) -> float:
    n = ctx.crowd()
    t = time.monotonic()
    ctx.marks["sigterm"] = t
    ctx.marks["sigterm_wall"] = time.time()
    ctx.p.kill("serve", signal.SIGTERM)
    status = ctx.p.reap("serve", 60)
    took = time.monotonic() - t
    ctx.note(f"API sent SIGTERM with {n} requests in flight; it exited with status {status} after {took:.1f}s")
    ctx.check("API exits after SIGTERM", status in (0, -signal.SIGTERM), f"status {status} after {took:.1f}s")
    ctx.restart("serve")
    return t


def after_api_sigterm(ctx: Ctx) -> None:
    """Every request the API had taken when SIGTERM came got an HTTP answer.

    A request that got no answer is told apart by when its event was received: before the
    SIGTERM, the stopping API had taken it (and failed to answer: a broken promise); after
    it, the stopping API never read it (it reached a keep-alive connection the shutdown
    closed as idle) and a retry was accepted by the next API process.
    """
    t, wall = ctx.marks.get("sigterm"), ctx.marks.get("sigterm_wall")
    if t is None or wall is None:
        return
    in_flight = [a for a in ctx.load.ledger.attempts if a.started < t < a.ended]
    unanswered = [a for a in in_flight if not a.kind.isdigit()]
    kinds: dict[str, int] = {}
    for a in in_flight:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    taken, not_read = [], []
    for a in unanswered:
        rows = ctx.obs.sql("SELECT extract(epoch FROM received_at) FROM {schema}.event_metadata WHERE id = %s",
                           (a.first_id,))
        received = float(rows[0][0]) if rows else None
        (taken if received is not None and received < wall else not_read).append((a, received))
    detail = f"{len(in_flight)} requests in flight: {', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}"
    ctx.check("every request the API had taken when SIGTERM came is answered", not taken,
              detail + (f"; {len(taken)} taken before SIGTERM got no answer: "
                        + ", ".join(f"{a.first_id} ({a.error})" for a, _ in taken[:5]) if taken else ""))
    if not_read:
        ctx.check("no request in flight at SIGTERM is reset before the API reads it", False,
                  f"{len(not_read)} of {len(in_flight)} were reset without an answer ("
                  + "; ".join(f"{a.first_id}: {a.error or a.kind}, sent {1000 * (t - a.started):.0f} ms before "
                              f"SIGTERM, received by the next API process "
                              + (f"{received - wall:.1f} s after it" if received is not None else "never")
                              for a, received in not_read[:5])
                  + "): they reached a keep-alive connection that uvicorn's shutdown closes as idle; the "
                  "client's retry (same id) was accepted", finding=True)


def kafka_kill9(ctx: Ctx) -> float:
    t = time.monotonic()
    ctx.stack.kill9("kafka")
    took = ctx.stack.start("kafka")
    ctx.note(f"Kafka killed with SIGKILL, restarted at once: healthy after {took:.1f}s")
    return t


def kafka_stop(ctx: Ctx) -> float:
    hold = 15.0 if ctx.quick else 30.0
    ctx.stack.stop("kafka")
    time.sleep(hold)
    t = time.monotonic()
    took = ctx.stack.start("kafka")
    ctx.note(f"Kafka stopped for {hold:.0f}s while the API and the consumers ran; healthy {took:.1f}s after start")
    return t


def s3_kill9(ctx: Ctx) -> float:
    ctx.crowd(batch=False)
    t = time.monotonic()
    ctx.stack.kill9("s3")
    took = ctx.stack.start("s3")
    ctx.note(f"S3 server killed with SIGKILL during writes, restarted at once: healthy after {took:.1f}s")
    return t


def postgres_kill9_commits(ctx: Ctx) -> float:
    ctx.crowd()
    t = time.monotonic()
    ctx.stack.kill9("postgres")
    took = ctx.stack.start("postgres")
    ctx.note(f"PostgreSQL killed (SIGKILL to the postmaster and every backend) during commits; "
             f"healthy after {took:.1f}s (crash recovery)")
    return t


def _wait_leased(ctx: Ctx, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = ctx.leased()
        if n:
            return n
        time.sleep(0.02)
    return 0


def postgres_kill9_relay_claim(ctx: Ctx) -> float:
    ctx.build_backlog(("relay-1",), 6.0 if ctx.quick else 8.0)
    ctx.restart("relay-1")
    leased = _wait_leased(ctx)
    t = time.monotonic()
    ctx.stack.kill9("postgres")
    ctx.note(f"PostgreSQL killed with SIGKILL while the relay held a claim on {leased} rows (leased, not yet marked)")
    took = ctx.stack.start("postgres")
    ctx.note(f"PostgreSQL healthy after {took:.1f}s")
    return t


def relay_kill9_between_publish_and_mark(ctx: Ctx) -> float:
    """The relay reaches PostgreSQL through a proxy; once it holds a claim the proxy stops
    forwarding its statements, so it publishes and then waits for `mark_published` for
    ever: killed there, with the claimed rows published and never marked."""
    from .proxy import HoldingProxy

    ctx.build_backlog(("relay-1",), 6.0 if ctx.quick else 8.0)
    before = ctx.obs.end_offsets()
    proxy = HoldingProxy(int(ctx.p.stack_env["POSTGRES_PORT"]))
    ctx.p.role_env["relay-1"] = {"POSTGRES_PORT": str(proxy.port)}
    try:
        ctx.restart("relay-1")
        leased = _wait_leased(ctx)
        proxy.hold()
        claimed = {r[0] for r in ctx.obs.sql("SELECT id FROM {schema}.event_metadata WHERE status = 'stored' "
                                             "AND lease_until > statement_timestamp()") or []}
        # nothing the relay sends reaches PostgreSQL any more: wait until its claimed rows
        # are on the topic (published), then kill it while it waits to mark them
        published = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and before is not None and claimed:
            now = ctx.obs.end_offsets()
            if now is not None:
                keys = ctx.obs.keys_between(before, now)
                published = sum(1 for i in claimed if keys[i])
                if published == len(claimed):
                    break
            time.sleep(0.3)
        t = time.monotonic()
        ctx.p.kill9("relay-1")
    finally:
        ctx.p.role_env.pop("relay-1", None)
        proxy.close()
    ctx.note(f"relay killed with SIGKILL after publishing {published} of the {len(claimed)} rows it had claimed "
             f"and before marking any (its statements after the claim, {proxy.dropped} bytes, never reached "
             "PostgreSQL); they are published again when their lease (60 s) expires")
    ctx.restart("relay-1")
    return t


def relay_sigterm_with_lease(ctx: Ctx) -> float:
    """SIGTERM to a relay that holds a lease: Kafka is stopped, the relay claims overdue rows
    and its publish fails (delivery timeout); then SIGTERM. The relay must give its lease
    back (a failed publish and a stop release the batch's claim): a row still leased after
    it exited is a failure."""
    ctx.stack.stop("kafka")
    leased = _wait_leased(ctx, timeout=60)
    claimed = {r[0] for r in ctx.obs.sql("SELECT id FROM {schema}.event_metadata WHERE status = 'stored' "
                                         "AND lease_until > statement_timestamp()") or []}
    began = time.monotonic()
    ctx.graceful_stop("relay-1", f"holding a lease on {leased} rows whose publish failed")
    still = ctx.leased() or 0
    ctx.check("the relay releases its lease on SIGTERM", still == 0,
              f"{still} of the {leased} rows it had claimed were still leased after it exited "
              f"({time.monotonic() - began:.1f}s after SIGTERM)")
    ctx.stack.start("kafka")
    ctx.restart("relay-1")
    t = time.monotonic()
    waited = None
    deadline = t + 120
    while time.monotonic() < deadline and claimed:
        rows = ctx.obs.sql("SELECT count(*) FROM {schema}.event_metadata WHERE id = ANY(%s) AND status = 'stored'",
                           (sorted(claimed),))
        if rows is not None and rows[0][0] == 0:
            waited = time.monotonic() - t
            break
        time.sleep(0.25)
    ctx.note(f"Kafka stopped; the relay claimed {leased} overdue rows and could not publish them; SIGTERM; "
             f"Kafka and the relay back: those rows were published "
             + (f"{waited:.1f}s later" if waited is not None else "not within 120 s")
             + " (a released lease: at once; a kept one: when it expires, 60 s after the claim)")
    return t


def consumer_kill9(ctx: Ctx) -> float:
    """Killed while ClickHouse writes a part: a `tmp_insert_*` directory is present in the
    table's directory of the consumer's engine (polled every half millisecond)."""
    role = "consume-a"
    table = ctx.p.engine_dir(role) / "data" / "wotr" / "ingested_data"
    rows = ctx.p.metric(role, "wotr_sink_rows_total")
    wait = 3.0 if ctx.paired else 20.0
    deadline = time.monotonic() + wait
    caught = None
    while time.monotonic() < deadline and caught is None:
        try:
            caught = next((n for n in os.listdir(table) if n.startswith("tmp_insert")), None)
        except OSError:
            pass
        if caught is None:
            time.sleep(0.0005)
    t = time.monotonic()
    ctx.p.kill9(role)
    if caught:
        ctx.note(f"{role} killed with SIGKILL mid-insert (part {caught} being written; {rows:.0f} rows loaded by it "
                 "before); restarted at once")
    else:
        ctx.note(f"{role} killed with SIGKILL (no insert caught in flight within {wait:.0f} s); restarted at once")
    ctx.restart(role)
    return t


def consumer_rebalance(ctx: Ctx) -> float:
    ctx.restart("consume-c")
    ctx.note("consume-c joined the group (rebalance: 3 consumers, 3 partitions)")
    ctx.hold(10, 6)
    t = time.monotonic()
    ctx.graceful_stop("consume-c", "leaving the group mid-load")
    ctx.note("consume-c left the group (rebalance back to 2 consumers)")
    return t


def two_relays(ctx: Ctx) -> float:
    ctx.build_backlog(("relay-1",), 6.0 if ctx.quick else 8.0)
    starters = [threading.Thread(target=ctx.restart, args=(role,)) for role in ("relay-1", "relay-2")]
    for s in starters:
        s.start()
    for s in starters:
        s.join()
    ctx.note("two relays started at once on the backlog")
    try:
        wait_until(lambda: ctx.obs.stored() == 0, 60, "the relays to drain the backlog", interval=0.2)
    except TimeoutError:
        ctx.note("the backlog was not drained within 60 s")
    t = time.monotonic()
    published = {r: ctx.p.metric(r, "wotr_messages_published_total") for r in ("relay-1", "relay-2")}
    ctx.note("messages published by each relay: " + ", ".join(f"{r} {n:.0f}" for r, n in published.items()))
    ctx.graceful_stop("relay-2", "after draining")
    return t


def _bind_readonly(path: Path) -> None:
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)


def _unbind(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False, capture_output=True)


def clickhouse_unwritable(ctx: Ctx) -> float:
    role = "consume-a"
    engine = ctx.p.engine_dir(role)
    hold = 10.0 if ctx.quick else 20.0
    _bind_readonly(engine)
    try:
        ctx.note(f"{role}'s engine directory made read-only (bind mount) for {hold:.0f}s: its inserts fail")
        time.sleep(hold)
    finally:
        _unbind(engine)
    t = time.monotonic()
    ctx.note(f"{role}'s engine directory writable again")
    return t


def disk_full(ctx: Ctx) -> float:
    if not ctx.stack.s3_tmpfs():
        raise RuntimeError("the S3 data directory is not on its own tmpfs")
    hold = 8.0 if ctx.quick else 15.0
    filler = ctx.stack.fill_s3_disk()
    try:
        st = os.statvfs(ctx.stack.s3_data)
        ctx.note(f"the S3 server's filesystem filled ({st.f_bavail * st.f_frsize} bytes left) for {hold:.0f}s")
        time.sleep(hold)
    finally:
        ctx.stack.free_s3_disk(filler)
    t = time.monotonic()
    ctx.note("disk space freed")
    return t


# -- the matrix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    slug: str
    fault: str
    how: str
    inject: Callable[[Ctx], float]
    after: Callable[[Ctx], None] | None = None
    duration: float = 30.0  # seconds of load
    fault_at: float = 8.0  # seconds into the load


def together(a: Scenario, b: Scenario, duration: float = 40.0) -> Scenario:
    """Two faults injected at the same moment; ended when both have."""

    def inject(ctx: Ctx) -> float:
        ends: dict[str, float] = {}
        errors: list[BaseException] = []

        def run(s: Scenario) -> None:
            try:
                ends[s.slug] = s.inject(ctx)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        ctx.paired = True
        threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return max(ends.values())

    def after(ctx: Ctx) -> None:
        for s in (a, b):
            if s.after is not None:
                s.after(ctx)

    return Scenario(f"{a.slug}+{b.slug}", f"{a.fault} + {b.fault}", f"{a.how}; at the same time: {b.how}",
                    inject, after, duration=max(a.duration, b.duration, duration))


API_KILL = Scenario("api-kill9", "API process", "kill -9 mid-flush (a batch and single events in flight)", api_kill9)
API_TERM = Scenario("api-sigterm", "API process", "SIGTERM with requests in flight", api_sigterm, after_api_sigterm)
KAFKA_KILL = Scenario("kafka-kill9", "Kafka", "kill -9, restarted at once", kafka_kill9)
KAFKA_STOP = Scenario("kafka-stop30", "Kafka", "stopped for 30 s while the API and the consumers run", kafka_stop,
                      duration=50.0)
S3_KILL = Scenario("s3-kill9", "S3 server", "kill -9 during writes, restarted at once", s3_kill9)
PG_KILL = Scenario("pg-kill9-commits", "PostgreSQL", "kill -9 of the postmaster and its backends during commits",
                   postgres_kill9_commits)
PG_CLAIM = Scenario("pg-kill9-claim", "PostgreSQL", "kill -9 while the relay holds a claim (leased, unmarked rows)",
                    postgres_kill9_relay_claim, duration=35.0)
CONSUMER_KILL = Scenario("consumer-kill9", "consumer", "kill -9 mid-insert, restarted at once", consumer_kill9)
REBALANCE = Scenario("consumer-rebalance", "consumer", "a third consumer joins the group, then leaves (SIGTERM)",
                     consumer_rebalance)
RELAY_KILL = Scenario("relay-kill9", "relay", "kill -9 between publish and mark", relay_kill9_between_publish_and_mark,
                      duration=35.0)
RELAY_TERM = Scenario("relay-sigterm-lease", "relay", "SIGTERM while it holds a lease (Kafka down, its publish failed)",
                      relay_sigterm_with_lease, duration=40.0)
RELAY_TWO = Scenario("relay-two", "relay", "two relays at once on a backlog", two_relays, duration=35.0)
CH_FAIL = Scenario("clickhouse-unwritable", "ClickHouse sink",
                   "a consumer's engine directory read-only for 20 s (inserts fail), then writable", clickhouse_unwritable,
                   duration=40.0)
DISK_FULL = Scenario("disk-full", "disk", "the S3 server's filesystem (tmpfs) full for 15 s, then freed", disk_full,
                     duration=35.0)

SINGLE = [API_KILL, API_TERM, KAFKA_KILL, KAFKA_STOP, S3_KILL, PG_KILL, PG_CLAIM, CONSUMER_KILL, REBALANCE,
          RELAY_KILL, RELAY_TERM, RELAY_TWO, CH_FAIL, DISK_FULL]
PAIRS = [together(API_KILL, PG_KILL), together(KAFKA_STOP, CONSUMER_KILL), together(S3_KILL, CH_FAIL)]
FULL = SINGLE + PAIRS

QUICK_API = Scenario("api-kill9", API_KILL.fault, API_KILL.how, api_kill9, duration=18.0, fault_at=6.0)
QUICK_PG = Scenario("pg-kill9-commits", PG_KILL.fault, PG_KILL.how, postgres_kill9_commits, duration=18.0, fault_at=6.0)
QUICK_PAIR = together(Scenario("kafka-kill9", KAFKA_KILL.fault, KAFKA_KILL.how, kafka_kill9, duration=18.0, fault_at=6.0),
                      Scenario("consumer-kill9", CONSUMER_KILL.fault, CONSUMER_KILL.how, consumer_kill9, duration=18.0,
                               fault_at=6.0), duration=20.0)
QUICK = [QUICK_API, QUICK_PG, Scenario(QUICK_PAIR.slug, QUICK_PAIR.fault, QUICK_PAIR.how, QUICK_PAIR.inject,
                                       QUICK_PAIR.after, duration=20.0, fault_at=6.0)]
