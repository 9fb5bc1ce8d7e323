"""The consumer under faults: poison messages, a sink that refuses rows, a sink that is
down, and a worker loop that crashes (in-process, and `wotr consume` / `wotr serve` as
subprocesses).

The sink is the in-memory adapter with its fault switches (`outage`, `refuse`,
`unavailable_for`, `write_failures`); the real engine's refusals are in
tests/contract/test_analytics_sink.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from dependency_injector import providers
from litestar.testing import TestClient

from wotr_domain.errors import Unavailable
from wotr_domain.models import BusMessage, IngestRequest
from wotr_domain.services import AnalyticsLoader, decode_batch
from wotr_apps.container import build_container
from wotr_apps.runners import EXIT_WORKER_CRASHED, run_until_signalled
from wotr_apps.settings import Settings
from wotr_apps.workers import WorkerThread, run_consumer


class Recorder:
    """A LoaderObserver that counts what it is told."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def batch(self, size: int) -> None:
        self.counts["batch"] += size

    def loaded(self, rows: int) -> None:
        self.counts["loaded"] += rows

    def dead_lettered(self, messages: int) -> None:
        self.counts["dead_lettered"] += messages


def events(ingest, n: int) -> list[str]:
    return [ingest.ingest(IngestRequest(payload={"n": i})).id for i in range(n)]


def new_loader(bus, sink, observer=None, **kwargs) -> AnalyticsLoader:
    kwargs.setdefault("retry_delay", 0)
    return AnalyticsLoader(bus.subscribe("g"), sink, observer, **kwargs)


def wait_for(condition, timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- 1. poison messages ----------------------------------------------------------------


def test_a_deeply_nested_message_is_dead_lettered_and_the_batch_goes_on(ingest, bus, sink):
    before = events(ingest, 2)
    deep = b'{"id":"deep","received_at":"2026-01-01T00:00:00Z","payload":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    bus.publish([BusMessage(key="deep", value=deep, headers={})])
    after = events(ingest, 2)
    outcome = new_loader(bus, sink).run_once(timeout=0)
    assert (outcome.received, outcome.loaded, outcome.dead_lettered) == (5, 4, 1)
    assert set(sink.rows) == set(before + after)
    (letter,) = bus.dead_letters()
    assert letter.value == deep
    reason = letter.headers["dlq-reason"]
    assert reason.startswith("undecodable event") and ("deeper" in reason or "recursion" in reason), reason
    assert bus.committed["g"] == 5


@pytest.mark.parametrize(
    "error",
    [
        RecursionError("maximum recursion depth exceeded while deserializing an object"),
        ValueError("day is out of range for month"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        TypeError("a bytes-like object is required"),
        KeyError("payload"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_whatever_the_decoder_raises_dead_letters_that_message_alone(ingest, bus, sink, monkeypatch, error):
    from wotr_domain.services import loader as loader_module

    real = loader_module.decode_event_fields

    def decode(data: bytes):
        if data == b"poison":
            raise error
        return real(data)

    monkeypatch.setattr(loader_module, "decode_event_fields", decode)
    good = events(ingest, 1)
    bus.publish([BusMessage(key="p", value=b"poison", headers={})])
    good += events(ingest, 1)
    outcome = new_loader(bus, sink).run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (2, 1)
    assert set(sink.rows) == set(good)
    reason = bus.dead_letters()[0].headers["dlq-reason"]
    assert reason.startswith(f"undecodable event ({type(error).__name__}): ") and str(error) in reason
    assert bus.committed["g"] == 3


def test_a_message_without_bytes_is_dead_lettered(ingest, bus, sink):
    bus.publish([BusMessage(key="tombstone", value=None, headers={})])  # type: ignore[arg-type]
    good = events(ingest, 1)
    rows, rejects = decode_batch(bus.subscribe("peek").poll(10, 0))
    assert [r.id for r in rows] == good
    assert [d.key for d, _ in rejects] == ["tombstone"] and rejects[0][1].startswith("undecodable event")


def test_the_consumer_thread_survives_poison_and_keeps_loading(ingest, bus, sink, monkeypatch):
    from wotr_domain.services import loader as loader_module

    real = loader_module.decode_event_fields
    monkeypatch.setattr(loader_module, "decode_event_fields",
                        lambda data: (_ for _ in ()).throw(RecursionError("deep")) if data == b"poison" else real(data))
    bus.publish([BusMessage(key="p", value=b"poison", headers={})])
    worker = WorkerThread("wotr-consumer", lambda stop: run_consumer(new_loader(bus, sink), stop, batch_size=10, batch_seconds=0.02))
    worker.start()
    try:
        ids = events(ingest, 3)
        wait_for(lambda: set(sink.rows) == set(ids), what="the events after the poison message")
        assert worker.is_alive() and worker.error is None
        worker.check()
    finally:
        worker.stop()
    assert len(bus.dead_letters()) == 1 and bus.committed["g"] == 4


def test_events_that_trickle_in_are_loaded_in_batches_gathered_for_the_batch_time(ingest, bus, sink):
    """A small batch is taken at most once per batch time: events arriving one by one are
    loaded in a few inserts, not one each."""
    sizes: list[int] = []

    class Sizes(Recorder):
        def batch(self, size: int) -> None:
            sizes.append(size)

    worker = WorkerThread("wotr-consumer", lambda stop: run_consumer(
        new_loader(bus, sink, Sizes()), stop, batch_size=1000, batch_seconds=0.2))
    worker.start()
    try:
        ids: list[str] = []
        for _ in range(30):  # 30 events over about 0.6 s
            ids += events(ingest, 1)
            time.sleep(0.02)
        wait_for(lambda: set(sink.rows) == set(ids), what="the trickled events")
    finally:
        worker.stop()
    assert sum(sizes) == 30
    assert len(sizes) <= 8, sizes  # about one batch per 0.2 s, not one per event


# -- 3. a sink that refuses rows, a sink that is down ---------------------------------


def test_a_refused_row_is_isolated_dead_lettered_and_the_rest_loaded(ingest, bus, sink):
    ids = events(ingest, 9)
    bad = ids[4]
    sink.refuse = lambda row: row.id == bad
    recorder = Recorder()
    outcome = new_loader(bus, sink, recorder).run_once(timeout=0)
    assert (outcome.received, outcome.loaded, outcome.dead_lettered, outcome.refused) == (9, 8, 1, 1)
    assert set(sink.rows) == set(ids) - {bad}
    (letter,) = bus.dead_letters()
    assert letter.key == bad
    assert letter.headers["dlq-reason"].startswith("refused by the analytics sink: ")
    assert bad in letter.headers["dlq-reason"]
    assert bus.committed["g"] == 9
    assert recorder.counts == Counter(batch=9, loaded=8, dead_lettered=1)


def test_scattered_refused_rows_are_each_isolated_with_few_writes(ingest, bus, sink):
    ids = events(ingest, 64)
    bad = {ids[0], ids[17], ids[40], ids[63]}
    sink.refuse = lambda row: row.id in bad
    outcome = new_loader(bus, sink).run_once(timeout=0)
    assert (outcome.loaded, outcome.refused) == (60, 4)
    assert set(sink.rows) == set(ids) - bad
    assert {d.key for d in bus.dead_letters()} == bad
    assert sink.writes <= 4 * 2 * 6  # bisection: about 2 log2(n) writes per refused row, not n
    assert bus.committed["g"] == 64


def test_a_batch_of_only_refused_rows_is_dead_lettered_and_committed(ingest, bus, sink):
    ids = events(ingest, 3)
    sink.refuse = lambda row: True
    outcome = new_loader(bus, sink).run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (0, 3)
    assert sorted(d.key for d in bus.dead_letters()) == sorted(ids)
    assert bus.committed["g"] == 3


def test_a_sink_outage_dead_letters_nothing_commits_nothing_and_recovers(ingest, bus, sink):
    ids = events(ingest, 5)
    loader = new_loader(bus, sink)
    batch = loader.poll(100, 0)
    sink.outage = True
    for _ in range(3):  # however often it is retried
        with pytest.raises(Unavailable):
            loader.handle(batch)
    assert bus.dead_letters() == [] and bus.committed.get("g", 0) == 0 and sink.rows == {}
    sink.outage = False
    outcome = loader.handle(batch)
    assert (outcome.loaded, outcome.dead_lettered) == (5, 0)
    assert set(sink.rows) == set(ids) and bus.committed["g"] == 5


def test_the_consumer_waits_out_an_outage_without_loss(ingest, bus, sink):
    sink.outage = True
    ids = events(ingest, 4)
    worker = WorkerThread("wotr-consumer", lambda stop: run_consumer(new_loader(bus, sink), stop, batch_size=10, batch_seconds=0.02))
    worker.start()
    try:
        time.sleep(0.5)  # a few attempts against the dead sink
        assert bus.dead_letters() == [] and bus.committed.get("g", 0) == 0
        sink.outage = False
        wait_for(lambda: set(sink.rows) == set(ids), timeout=10, what="recovery")
        wait_for(lambda: bus.committed.get("g", 0) == 4, what="the commit")
    finally:
        worker.stop()
    assert bus.dead_letters() == [] and worker.error is None


def test_an_outage_during_isolation_dead_letters_nothing(ingest, bus, sink):
    ids = events(ingest, 6)

    def refuse_then_go_down(row):
        if row.id == ids[2]:
            sink.outage = True  # the sink refuses this row, then goes down
            return True
        return False

    sink.refuse = refuse_then_go_down
    loader = new_loader(bus, sink)
    batch = loader.poll(100, 0)
    with pytest.raises(Unavailable):
        loader.handle(batch)
    assert bus.dead_letters() == [] and bus.committed.get("g", 0) == 0
    sink.outage, sink.refuse = False, None
    assert loader.handle(batch).loaded == 6 and set(sink.rows) == set(ids)


def test_a_transient_write_failure_is_retried_with_backoff_without_splitting(ingest, bus, sink):
    ids = events(ingest, 5)
    sink.write_failures = 2  # check() passes meanwhile
    pauses: list[float] = []
    loader = new_loader(bus, sink, attempts=3, retry_delay=0.1)
    outcome = loader.handle(loader.poll(100, 0), wait=lambda s: pauses.append(s) or False)
    assert (outcome.loaded, outcome.dead_lettered) == (5, 0)
    assert pauses == [0.1, 0.2] and sink.writes == 1  # one successful write: no split
    assert set(sink.rows) == set(ids)


def test_stopping_during_the_retries_leaves_the_batch_uncommitted(ingest, bus, sink):
    events(ingest, 2)
    sink.write_failures = 10
    loader = new_loader(bus, sink)
    with pytest.raises(Unavailable):
        loader.handle(loader.poll(100, 0), wait=lambda s: True)
    assert bus.dead_letters() == [] and bus.committed.get("g", 0) == 0


def test_a_row_failing_past_the_bound_while_the_sink_answers_is_isolated(ingest, bus, sink):
    ids = events(ingest, 8)
    bad = ids[5]
    sink.unavailable_for = lambda row: row.id == bad
    outcome = new_loader(bus, sink).run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (7, 1)
    assert set(sink.rows) == set(ids) - {bad}
    (letter,) = bus.dead_letters()
    assert letter.key == bad and letter.headers["dlq-reason"].startswith("not loadable into the analytics sink")
    assert bus.committed["g"] == 8


def test_a_sink_that_takes_no_row_while_answering_dead_letters_nothing(ingest, bus, sink):
    events(ingest, 8)
    sink.write_failures = 10**6  # every write fails, the check passes: disk full, read-only...
    loader = new_loader(bus, sink)
    with pytest.raises(Unavailable):
        loader.handle(loader.poll(100, 0))
    assert bus.dead_letters() == [] and bus.committed.get("g", 0) == 0
    assert sink.write_failures > 10**6 - 8  # and it gave up after a few writes, not 2n


def test_a_lone_row_failing_while_the_sink_answers_is_kept_for_a_retry(ingest, bus, sink):
    (only,) = events(ingest, 1)
    sink.unavailable_for = lambda row: row.id == only
    loader = new_loader(bus, sink)
    with pytest.raises(Unavailable):
        loader.handle(loader.poll(100, 0))
    assert bus.dead_letters() == [] and bus.committed.get("g", 0) == 0


# -- 2. a worker loop that dies ----------------------------------------------------------


def _boom(stop: threading.Event) -> None:
    raise RuntimeError("boom")


def test_a_crashed_worker_is_recorded_and_reported():
    crashed: list[WorkerThread] = []
    worker = WorkerThread("wotr-consumer", _boom, on_crash=crashed.append)
    worker.start()
    wait_for(lambda: crashed, what="the crash handler")
    assert crashed == [worker] and worker.crashed and not worker.is_alive()
    assert isinstance(worker.error, RuntimeError)
    with pytest.raises(Unavailable, match=r"worker wotr-consumer .*crashed: RuntimeError: boom"):
        worker.check()
    worker.stop(timeout=1)


def test_a_loop_that_returns_unasked_is_a_crash_and_a_stopped_one_is_not():
    quitter = WorkerThread("quitter", lambda stop: None)
    quitter.start()
    wait_for(lambda: quitter.crashed, what="the crash")
    assert "without being asked to stop" in str(quitter.error)
    steady = WorkerThread("steady", lambda stop: stop.wait())
    steady.start()
    steady.stop(timeout=5)
    assert not steady.crashed and not steady.is_alive()
    steady.check()


def test_ready_answers_503_naming_a_crashed_worker():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}))
    alive = WorkerThread("wotr-relay", lambda stop: stop.wait())
    dead = WorkerThread("wotr-consumer", _boom)
    container.serve_workers.override(providers.Object([alive, dead]))
    with TestClient(container.app()) as client:
        wait_for(lambda: dead.crashed, what="the crash")
        r = client.get("/ready")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["wotr-relay"] == "ok" and checks["event_bus"] == "ok"
        assert checks["wotr-consumer"] == "down"  # which one; the error itself goes to the log only
        assert client.get("/health").status_code == 200


def test_run_until_signalled_returns_70_when_its_worker_crashes(tmp_path):
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), role="consume")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ready = tmp_path / "ready"

    def slow_boom(stop: threading.Event) -> None:
        time.sleep(0.2)
        raise RuntimeError("boom")

    try:
        container.consumer.override(providers.Object(WorkerThread("wotr-consumer", slow_boom)))
        status = run_until_signalled(container, metrics_port=0, ready_file=ready)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert status == EXIT_WORKER_CRASHED == 70
    assert not ready.exists()


# -- the processes, end to end ---------------------------------------------------------

# `wotr` with one worker loop replaced by one that crashes: the real CLI, container,
# adapters, signal handling and exit status around it.
_CRASHING_WOTR = textwrap.dedent("""
    import sys, time
    import wotr_apps.workers as workers

    def crashing_loop(*args, stop=None, **kwargs):
        time.sleep(float(sys.argv[1]))
        raise RuntimeError("injected fault in the loop")

    workers.{loop} = lambda target, stop, **kwargs: crashing_loop(stop=stop)
    from wotr_apps.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "CLICKHOUSE_", "KAFKA_"))}
    env.update({"WOTR_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wotr_consume_exits_70_when_its_loop_crashes(tmp_path):
    ready = tmp_path / "consume.ready"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_WOTR.format(loop="run_consumer"), "0.5",
         "consume", "--metrics-port", "0", "--ready-file", str(ready)],
        env=_env(tmp_path, WOTR_PROFILE="embedded"), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 70, proc.stdout + proc.stderr[-3000:]
    assert "ready" in proc.stdout
    assert "worker wotr-consumer crashed: RuntimeError: injected fault in the loop" in proc.stderr
    assert not ready.exists()


def test_wotr_consume_waits_for_kafka_at_start_and_stops_promptly_on_sigterm(tmp_path):
    """Kafka does not answer at start-up (a closed loopback port): `wotr consume` does not
    exit (it used to exit 3) but logs and retries with backoff, not ready; SIGTERM still
    stops it promptly with status 0."""
    pytest.importorskip("confluent_kafka")
    ready = tmp_path / "consume.ready"
    log_path = tmp_path / "consume.log"
    env = _env(tmp_path, WOTR_PROFILE="local", KAFKA_BOOTSTRAP=f"127.0.0.1:{_free_port()}", WOTR_SQL_PORT="0",
               CLICKHOUSE_DSN=f"chdb://{tmp_path / 'ch'}")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wotr_apps.cli", "consume", "--metrics-port", "0", "--ready-file", str(ready)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        retries = lambda: log_path.read_text(errors="replace").count("consume: cannot start yet")  # noqa: E731
        wait_for(lambda: retries() >= 2 or proc.poll() is not None, timeout=60, what="two logged attempts")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        # WOTR_CONSUMER_NICE (10 by default): it gives way to the API on shared cores.
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        assert "kafka is unavailable" in log_path.read_text(errors="replace")
        assert not ready.exists()
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text(errors="replace")
    assert status == 0, output[-3000:]
    assert took < 15, f"{took:.1f}s from SIGTERM to exit"
    assert "stopped before its dependencies answered" in output
    assert "ready" not in output.splitlines() and not ready.exists()


def test_wotr_serve_shuts_down_with_70_when_a_worker_crashes(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WOTR.format(loop="run_relay"), "2", "serve", "--with-workers"],
        env=_env(tmp_path, WOTR_PROFILE="memory", WOTR_PORT=str(port)), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health") or proc.poll() is not None, timeout=60, what="the API")
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert status == 70, output[-3000:]
    assert "worker wotr-relay crashed: RuntimeError: injected fault in the loop" in output
    assert "Application shutdown complete" in output  # a graceful shutdown, not a kill


def test_wotr_serve_still_stops_on_sigterm(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wotr_apps.cli", "serve", "--with-workers"],
        env=_env(tmp_path, WOTR_PROFILE="memory", WOTR_PORT=str(port)), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/ready") or proc.poll() is not None, timeout=60, what="the API")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status == -signal.SIGTERM, proc.stdout.read()[-3000:]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
