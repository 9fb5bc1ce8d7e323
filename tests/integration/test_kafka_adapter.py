"""Kafka event bus beyond the port contract: rebalances, brokers that cannot acknowledge,
back-pressure and read-back, on the real broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from wotr_adapters.connections import KafkaConnection
from wotr_adapters.kafka import KafkaEventBus, KafkaSubscription
from wotr_adapters.kafka.clients import delivery_of
from wotr_domain.errors import Unavailable
from wotr_domain.models import BusMessage, Delivery


def messages(n: int, prefix: str = "id") -> list[BusMessage]:
    return [BusMessage(key=f"{prefix}-{i}", value=f'{{"n":{i}}}'.encode(), headers={"event-id": f"{prefix}-{i}"}) for i in range(n)]


def drop(bootstrap: str, topics: list[str]) -> None:
    for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics).values():
        try:
            future.result(timeout=10)
        except Exception:  # already gone
            pass


@pytest.fixture
def bus(kafka_connection: KafkaConnection) -> Iterator[KafkaEventBus]:
    b = KafkaEventBus(kafka_connection.bootstrap, f"it-{uuid.uuid4().hex[:12]}", partitions=3)
    b.start()
    yield b
    b.close()
    drop(kafka_connection.bootstrap, [b.topic, b.dead_letter_topic])


def drain(sub: KafkaSubscription, expected: int, timeout: float = 30.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(sub.poll(max_messages=500, timeout=0.5))
    return got


def committed(bus: KafkaEventBus, group: str) -> dict[int, int]:
    """The group's committed offsets per partition, read without joining the group."""
    reader = Consumer({"bootstrap.servers": bus._client["bootstrap.servers"], "group.id": group})
    try:
        offsets = reader.committed([TopicPartition(bus.topic, p) for p in range(bus.partitions)], timeout=10)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


def test_commits_of_revoked_partitions_are_skipped(bus: KafkaEventBus):
    bus.publish(messages(60))
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = bus.subscribe(group)
    b = None
    try:
        first = drain(a, 60)
        assert len(first) == 60 and {d.partition for d in first} == {0, 1, 2}
        b = bus.subscribe(group)
        # Both members poll until the group has rebalanced and b reads a partition.
        seen_by_b: list[Delivery] = []
        deadline = time.monotonic() + 40
        while not seen_by_b and time.monotonic() < deadline:
            a.poll(max_messages=100, timeout=0.2)
            seen_by_b = b.poll(max_messages=100, timeout=0.2)
        assert seen_by_b, "the second member never got a partition"
        a.commit(first)  # includes partitions a lost: must neither fail nor commit them
        done = committed(bus, group)
    finally:
        a.close()
        if b is not None:
            b.close()
    ends = {p: max(d.offset for d in first if d.partition == p) + 1 for p in range(3)}
    assert done, "a kept at least one partition and committed it"
    assert not set(done) & {d.partition for d in seen_by_b}
    assert all(done[p] == ends[p] for p in done)


def test_a_polled_batch_holds_what_delivery_of_makes_of_each_message_whatever_its_headers(bus: KafkaEventBus):
    # The subscription reads each message into columns once and makes a Delivery only when
    # asked: it must be what `delivery_of` makes of the same driver message.
    sent = [
        (b"k1", b"v1", [("object-key", b"raw/1.json")]),
        (b"k2", b"v2", [("object-key", b"raw/2.ndjson"), ("object-line", b"3")]),
        (b"k3", b"v3", None),
        (None, b"v4", [("object-key", None)]),
        (b"k5", b"", [("object-key", b"first"), ("x", b"\xff"), ("object-key", b"second")]),
        (b"\xff", b"v6", [("other", b"o")]),
    ]
    producer = Producer({"bootstrap.servers": bus._client["bootstrap.servers"]})
    for key, value, headers in sent:
        producer.produce(bus.topic, value, key, headers=headers, partition=1)
    assert producer.flush(10) == 0
    reader = Consumer({"bootstrap.servers": bus._client["bootstrap.servers"], "group.id": f"g-{uuid.uuid4().hex[:8]}",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})
    reader.subscribe([bus.topic])
    expected: dict[int, Delivery] = {}
    deadline = time.monotonic() + 30
    while len(expected) < len(sent) and time.monotonic() < deadline:
        expected.update((m.offset(), delivery_of(m)) for m in reader.consume(10, timeout=0.5) if m.error() is None)
    reader.close()
    sub = bus.subscribe(f"g-{uuid.uuid4().hex[:8]}")
    try:
        batches = []
        deadline = time.monotonic() + 30
        while sum(map(len, batches)) < len(sent) and time.monotonic() < deadline:
            if batch := sub.poll(max_messages=100, timeout=0.5):
                batches.append(batch)
    finally:
        sub.close()
    got = [d for batch in batches for d in batch]
    assert got == [expected[offset] for offset in sorted(expected)] and len(got) == len(sent)
    for batch in batches:
        for i, d in enumerate(batch):
            assert batch[i] == d == batch[i - len(batch)]
            assert (batch.keys[i], batch.values[i], batch.object_keys[i]) == (d.key, d.value, d.headers.get("object-key", ""))
        assert batch[1:] == list(batch)[1:]
        with pytest.raises(IndexError):
            batch[len(batch)]
    assert [d.headers for d in got][3:5] == [{"object-key": ""}, {"object-key": "second", "x": "\ufffd"}]


def test_a_commit_does_not_wait_for_a_concurrent_poll_to_time_out(bus: KafkaEventBus):
    bus.publish(messages(3))
    group = f"g-{uuid.uuid4().hex[:8]}"
    sub = bus.subscribe(group)
    try:
        got = drain(sub, 3)
        poller = threading.Thread(target=sub.poll, kwargs={"max_messages": 10, "timeout": 3.0})
        poller.start()
        time.sleep(0.3)  # the poll is waiting for messages that do not come
        started = time.monotonic()
        sub.commit(got)
        took = time.monotonic() - started
        poller.join()
    finally:
        sub.close()
    assert took < 1.5, f"the commit waited {took:.2f}s for the poll"
    assert sum(committed(bus, group).values()) == 3


def test_publish_raises_within_the_timeout_when_no_broker_acknowledges(kafka_connection: KafkaConnection):
    # Topics are created on the real broker; the producer alone talks to a dead address,
    # as a producer does whose broker stopped after start-up.
    bus = KafkaEventBus(kafka_connection.bootstrap, f"it-dead-{uuid.uuid4().hex[:12]}", delivery_timeout=3.0,
                        producer_config={"bootstrap.servers": "127.0.0.1:1"})
    bus.start()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as raised:
            bus.publish(messages(5))
        assert time.monotonic() - started < 6
        assert "5 of 5 messages" in str(raised.value)
    finally:
        bus.close()
        drop(kafka_connection.bootstrap, [bus.topic, bus.dead_letter_topic])


def test_a_message_the_broker_rejects_is_named(kafka_connection: KafkaConnection):
    topic = f"it-small-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka_connection.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "2000"})])[topic].result(timeout=10)
    bus = KafkaEventBus(kafka_connection.bootstrap, topic, partitions=1, producer_config={"compression.type": "none"})
    bus.start()
    try:
        with pytest.raises(Unavailable, match="1 of 1 messages") as raised:
            bus.publish([BusMessage(key="big", value=b"x" * 10_000)])
        assert "too large" in str(raised.value).lower()
        bus.publish(messages(1))  # the producer is still usable
        assert [d.key for d in bus.messages()] == ["id-0"]
    finally:
        bus.close()
        drop(kafka_connection.bootstrap, [topic, bus.dead_letter_topic])


def test_a_full_local_queue_is_waited_out_not_failed(kafka_connection: KafkaConnection):
    topic = f"it-queue-{uuid.uuid4().hex[:12]}"
    bus = KafkaEventBus(kafka_connection.bootstrap, topic, producer_config={"queue.buffering.max.messages": 50})
    bus.start()
    try:
        bus.publish(messages(2000))
        assert len(bus.messages(limit=5000)) == 2000
    finally:
        bus.close()
        drop(kafka_connection.bootstrap, [topic, bus.dead_letter_topic])


def test_messages_reads_back_the_topic_with_keys_and_headers(bus: KafkaEventBus):
    bus.publish(messages(7, prefix="rb"))
    got = bus.messages(limit=100)
    assert sorted(d.key for d in got) == sorted(f"rb-{i}" for i in range(7))
    assert all(d.headers["event-id"] == d.key for d in got)
    assert bus.messages(limit=3) and len(bus.messages(limit=3)) == 3
    assert bus.dead_letters() == []


def test_poll_returns_what_is_there_without_waiting_for_a_full_batch(bus: KafkaEventBus):
    sub = bus.subscribe(f"g-{uuid.uuid4().hex[:8]}")
    try:
        bus.publish(messages(3))
        started = time.monotonic()
        got = []
        while len(got) < 3 and time.monotonic() - started < 30:
            got += sub.poll(max_messages=1000, timeout=30)
        assert len(got) == 3
        assert time.monotonic() - started < 15  # joining included, far less than the 30 s it may wait
    finally:
        sub.close()


def test_check_reports_a_missing_topic(kafka_connection: KafkaConnection):
    bus = KafkaEventBus(kafka_connection.bootstrap, f"it-never-{uuid.uuid4().hex[:12]}")
    with pytest.raises(Unavailable, match="missing"):
        bus.check()


def test_polling_with_no_broker_raises_unavailable():
    sub = KafkaEventBus("127.0.0.1:1", "nowhere", request_timeout=2.0).subscribe("g")
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            for _ in range(10):
                sub.poll(max_messages=10, timeout=0.5)
        assert time.monotonic() - started < 10
    finally:
        sub.close()
