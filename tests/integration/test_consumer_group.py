"""Consumers scaled out: several `wotr consume` processes in one group share a topic's
partitions, and members joining, leaving (SIGTERM) and dying (SIGKILL) lose nothing.

Each consumer owns its own in-process ClickHouse engine (directory and SQL port), as
separate hosts would own their own ClickHouse server, so the analytics rows are the union
over the engines: each engine deduplicates its own rows by id (FINAL), and an event loaded
by two members around a rebalance is counted once by id. The raw duplicate count (rows
loaded more than once) is printed: at-least-once delivery makes it non-zero around
rebalances, and it is what the dedupe by id absorbs.

Also here: a topic the adapter creates carries the configured `min.insync.replicas`
(read back with `describe_configs` on the one-node stack).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

from wotr_adapters.kafka import KafkaEventBus, kafka_bus
from wotr_domain.archive import bus_message_for
from wotr_domain.codec import encode
from wotr_domain.models import Event

from pipeline_harness import WOTR, Pipeline, free_port, wait_until

PARTITIONS = 3
EVENTS = 6000
CHUNK = 100
CHUNK_EVERY = 0.35  # seconds: the load lasts ~20 s, across every membership change


@dataclass
class Member:
    """One `wotr consume` process with its own engine directory, SQL port and metrics port."""

    name: str
    group: Pipeline
    sql_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0

    @property
    def engine(self) -> Path:
        return self.group.workdir / f"ch-{self.name}"

    @property
    def ready_file(self) -> Path:
        return self.group.workdir / f"{self.name}.ready"

    @property
    def log_path(self) -> Path:
        return self.group.workdir / f"consume-{self.name}.log"

    def start(self) -> Member:
        env = self.group.env("consume") | {
            "CLICKHOUSE_DSN": f"chdb://{self.engine}",
            "WOTR_SQL_PORT": str(self.sql_port),
        }
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*WOTR, "consume", "--metrics-port", str(self.metrics_port), "--ready-file", str(self.ready_file)],
            env=env, cwd=self.group.workdir, stdout=log, stderr=log)
        self.started_at = time.monotonic()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: self.ready_file.exists() or self._died(), timeout, f"consumer {self.name} to be ready")
        self._died()

    def _died(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"consumer {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def read_engine(path: Path) -> subprocess.Popen:
    """A process reading one engine's ids (deduplicated: FINAL) and its raw row count."""
    code = (
        "import json, sys, clickhouse_connect;"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1]);"
        "ids = [r[0] for r in c.query('SELECT id FROM wotr.ingested_data FINAL').result_rows];"
        "raw = c.query('SELECT count() FROM wotr.ingested_data').result_rows[0][0];"
        "print(json.dumps({'ids': ids, 'raw': raw}))"
    )
    return subprocess.Popen([sys.executable, "-c", code, f"chdb://{path}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def committed_everything(reader: Consumer, topic: str) -> bool:
    """Whether the group's committed offset is the end of every partition."""
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    committed = {tp.partition: tp.offset for tp in reader.committed(partitions, timeout=10)}
    ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    return all(committed.get(p, -1) == end for p, end in ends.items())


def drop_topics(bootstrap: str, topics: list[str]) -> None:
    for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics).values():
        try:
            future.result(timeout=10)
        except Exception:  # already gone
            pass


@pytest.fixture
def group(tmp_path, s3_connection, kafka_connection, postgres_connection) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path, s3_connection, kafka_connection, postgres_connection)
    p.extra_env.update({"KAFKA_PARTITIONS": str(PARTITIONS), "KAFKA_REPLICATION_FACTOR": "1",
                        "KAFKA_MIN_INSYNC_REPLICAS": "1"})
    yield p
    drop_topics(kafka_connection.bootstrap, [p.name, f"{p.name}.dlq"])


def test_consumers_joining_leaving_and_dying_load_every_event_exactly_once_after_dedupe(group):
    started = time.monotonic()
    bus = KafkaEventBus(group.kafka.bootstrap, group.name, partitions=PARTITIONS)
    bus.start()  # the topic, 3 partitions, before any member subscribes
    members: list[Member] = []
    published: list[str] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        try:
            for start in range(0, EVENTS, CHUNK):
                now = datetime.now(UTC)
                batch = []
                for i in range(start, start + CHUNK):
                    event = Event(id=f"cg-{uuid.uuid4().hex}", received_at=now, payload={"n": i},
                                  source="consumer-group", type="test")
                    batch.append(bus_message_for(event.id, encode(event), f"raw/dt={now:%Y-%m-%d}/{event.id}.json"))
                bus.publish(batch)  # returns once the broker acknowledged every message
                published.extend(m.key for m in batch)
                time.sleep(CHUNK_EVERY)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            failure.append(e)
        finally:
            done.set()

    reader = Consumer({"bootstrap.servers": group.kafka.bootstrap, "group.id": f"{group.name}-analytics"})
    try:
        a, b = Member("a", group).start(), Member("b", group).start()
        members += [a, b]
        a.wait_ready()
        b.wait_ready()
        producer = threading.Thread(target=produce, name="producer")
        producer.start()
        time.sleep(3)
        c = Member("c", group).start()  # joins while events flow: the group rebalances
        members.append(c)
        c.wait_ready()
        time.sleep(3)
        assert a.stop(signal.SIGTERM) == 0  # leaves the group cleanly: a rebalance at once
        time.sleep(2)
        b.stop(signal.SIGKILL)  # dies: its partitions move after the session timeout (10 s)
        producer.join(120)
        assert done.is_set() and not failure, failure
        assert len(published) == EVENTS
        wait_until(lambda: c._died() or committed_everything(reader, group.name), 90,
                   "the group to commit every partition's end", interval=0.5)
        assert c.stop(signal.SIGTERM) == 0
    finally:
        reader.close()
        for m in members:
            if m.running:
                m.proc.kill()
                m.proc.wait(10)
        bus.close()

    readers = {m.name: read_engine(m.engine) for m in members}
    per_engine: dict[str, dict] = {}
    for name, proc in readers.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"engine {name}: {err[-3000:]}"
        per_engine[name] = json.loads(out.strip().splitlines()[-1])
    loaded: set[str] = set()
    for result in per_engine.values():
        loaded |= set(result["ids"])
    raw = sum(r["raw"] for r in per_engine.values())
    final = sum(len(r["ids"]) for r in per_engine.values())
    figures = {
        "published": len(published),
        "loaded (union by id)": len(loaded),
        "rows per engine (FINAL)": {n: len(r["ids"]) for n, r in per_engine.items()},
        "raw rows": raw,
        "raw duplicates": raw - len(loaded),
        "duplicates across engines": final - len(loaded),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nconsumer group: {figures}")
    assert len(set(published)) == EVENTS
    assert loaded == set(published), (len(set(published) - loaded), len(loaded - set(published)))
    # Every member loaded a share: a and b before c joined, c everything after b died.
    assert all(len(r["ids"]) > 0 for r in per_engine.values()), figures


def test_a_created_topic_carries_min_insync_replicas(kafka_connection):
    """What `KAFKA_REPLICATION_FACTOR` and `KAFKA_MIN_INSYNC_REPLICAS` give a topic wotr
    creates, read back from the broker: set on the topic itself (not the broker's default),
    on the events' topic and on the dead letters'."""
    from dataclasses import replace

    conn = replace(kafka_connection, topic=f"it-isr-{uuid.uuid4().hex[:12]}", partitions=2,
                   replication_factor=1, min_insync_replicas=1)
    bus = kafka_bus(conn)
    bus.start()
    try:
        admin = AdminClient({"bootstrap.servers": conn.bootstrap})
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in (conn.topic, conn.dead_letter_topic)]
        described = {r.name: f.result(timeout=10) for r, f in admin.describe_configs(resources).items()}
        for name in (conn.topic, conn.dead_letter_topic):
            entry = described[name]["min.insync.replicas"]
            assert entry.value == "1"
            assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, (name, entry)
        topics = admin.list_topics(timeout=10).topics
        assert len(topics[conn.topic].partitions) == 2 and len(topics[conn.dead_letter_topic].partitions) == 1
        assert {len(p.replicas) for p in topics[conn.topic].partitions.values()} == {1}
    finally:
        bus.close()
        drop_topics(conn.bootstrap, [conn.topic, conn.dead_letter_topic])
