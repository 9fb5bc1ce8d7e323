"""Kafka event bus on confluent-kafka (Kafka or Redpanda).

One idempotent producer per bus, created in `start()`; `publish` waits for the delivery
report of every message, so a return means the brokers acknowledged it (`acks=all`).
Subscriptions are consumer-group members that commit explicitly, synchronously, and only
for partitions they still own.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from wotr_domain.archive import dead_letter_for, dead_letter_topic
from wotr_domain.errors import Unavailable
from wotr_domain.models import BusMessage, Delivery

from .connections import KafkaConnection

__all__ = ["KafkaEventBus", "KafkaSubscription", "kafka_bus"]

log = logging.getLogger(__name__)
client_log = logging.getLogger(f"{__name__}.librdkafka")  # the client library's own lines, tunable apart

DEPENDENCY = "kafka"


def kafka_bus(conn: KafkaConnection, **options: Any) -> KafkaEventBus:
    """A bus on the connection's bootstrap servers and topic; `options` go to the constructor."""
    return KafkaEventBus(conn.bootstrap, conn.topic, partitions=conn.partitions, **options)


def _delivery(msg: Any) -> Delivery:
    key = msg.key()
    return Delivery(
        key=key.decode("utf-8", "replace") if key is not None else None,
        value=msg.value() or b"",
        headers={k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])},
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
    )


class KafkaEventBus:
    """Topic `topic` plus its dead-letter topic `<topic>.dlq`, both created by `start()`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int = 3,
        replication: int = 1,
        delivery_timeout: float = 10.0,
        request_timeout: float = 5.0,
        producer_config: dict[str, Any] | None = None,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic(topic)
        self.partitions = partitions
        self.replication = replication
        self.delivery_timeout = delivery_timeout
        self.request_timeout = request_timeout
        # librdkafka's own log lines go to Python logging rather than straight to stderr.
        self._client = {"bootstrap.servers": bootstrap, "client.id": "wotr", "logger": client_log}
        self._producer_config = {
            **self._client,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",  # same key -> partition mapping as the Java client
            "message.timeout.ms": int(delivery_timeout * 1000),
            **(producer_config or {}),
        }
        self._consumer_config = {
            **self._client,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            **(consumer_config or {}),
        }
        self._producer: Any = None
        self._admin_client: Any = None
        self._lock = threading.Lock()
        self._last_error: str = ""
        self._fatal: str = ""

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        admin = self._admin()
        wanted = {self.topic: self.partitions, self.dead_letter_topic: 1}  # one DLQ partition keeps it in order
        existing = self._metadata(admin).topics
        missing = [NewTopic(t, n, self.replication) for t, n in wanted.items() if t not in existing]
        if missing:
            futures = admin.create_topics(missing, request_timeout=self.request_timeout)
            for name, future in futures.items():
                try:
                    future.result(timeout=self.request_timeout + 1)
                except KafkaException as e:
                    if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise Unavailable(DEPENDENCY, f"cannot create topic {name}: {e.args[0].str()}") from e
                except TimeoutError as e:
                    raise Unavailable(DEPENDENCY, f"cannot create topic {name}: {e!r}") from e
            self._await_leaders(admin, list(wanted))
        with self._lock:
            if self._producer is None:
                self._producer = self._new_producer()

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            left = producer.flush(self.delivery_timeout)
            if left:
                log.warning("kafka producer closed with %d undelivered messages", left)

    def check(self) -> None:
        topics = self._metadata(self._producer).topics
        for name in (self.topic, self.dead_letter_topic):
            if name not in topics or topics[name].error is not None:
                raise Unavailable(DEPENDENCY, f"topic {name} is missing")

    def _await_leaders(self, admin: Any, names: list[str]) -> None:
        """Wait until new topics have a leader for every partition, so a consumer that
        subscribes right after `start()` does not see them as unknown."""
        deadline = time.monotonic() + self.request_timeout
        while True:
            topics = self._metadata(admin).topics
            if all(n in topics and topics[n].error is None and topics[n].partitions
                   and all(p.leader >= 0 for p in topics[n].partitions.values()) for n in names):
                return
            if time.monotonic() >= deadline:
                raise Unavailable(DEPENDENCY, f"topics {names} have no leader after {self.request_timeout:g}s")
            time.sleep(0.05)

    def _admin(self) -> Any:
        """The bus's admin client, for topic creation and metadata (created on first use)."""
        from confluent_kafka.admin import AdminClient

        with self._lock:
            if self._admin_client is None:
                self._admin_client = AdminClient(self._client)
            return self._admin_client

    def _metadata(self, client: Any | None) -> Any:
        """Cluster metadata (all topics: naming one would auto-create it on some brokers)."""
        from confluent_kafka import KafkaException

        try:
            return (client or self._admin()).list_topics(timeout=self.request_timeout)
        except KafkaException as e:
            raise Unavailable(DEPENDENCY, f"no metadata from {self._client['bootstrap.servers']}: {e.args[0].str()}") from e

    # -- producing -----------------------------------------------------------------

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        self._fatal = ""
        return Producer({**self._producer_config, "error_cb": self._on_error})

    def _on_error(self, error: Any) -> None:
        self._last_error = error.str()
        if error.fatal():
            self._fatal = error.str()
            log.error("kafka producer fatal error: %s", error.str())

    def _ready_producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                raise Unavailable(DEPENDENCY, "bus not started")
            if self._fatal:  # an idempotent producer cannot recover from a fatal error
                log.warning("replacing the kafka producer after a fatal error: %s", self._fatal)
                self._producer = self._new_producer()
            return self._producer

    def publish(self, messages: Sequence[BusMessage]) -> None:
        self._send(self.topic, messages)

    def _send(self, topic: str, messages: Sequence[BusMessage]) -> None:
        """Produce to `topic` and wait until every message is acknowledged or failed."""
        if not messages:
            return
        producer = self._ready_producer()
        self._last_error = ""  # only errors seen during this call explain its failure
        deadline = time.monotonic() + self.delivery_timeout
        pending = len(messages)
        errors: list[str] = []
        guard = threading.Lock()

        def delivered(err: Any, _msg: Any) -> None:
            nonlocal pending
            with guard:
                pending -= 1
                if err is not None:
                    errors.append(err.str())

        for m in messages:
            headers = [(k, v.encode()) for k, v in m.headers.items()]
            while True:
                try:
                    producer.produce(topic, m.value, m.key.encode(), headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: serve delivery reports to make room
                    if time.monotonic() >= deadline:
                        raise Unavailable(DEPENDENCY, f"local producer queue full, {topic} not accepting") from None
                    producer.poll(0.1)
        while pending and (remaining := deadline - time.monotonic()) > 0:
            # Short waits: another publisher's poll may serve our reports while we sleep.
            producer.poll(min(remaining, 0.01))
        if pending or errors:
            failed = pending + len(errors)
            detail = errors[0] if errors else f"no delivery report within {self.delivery_timeout:g}s"
            if self._last_error and not errors:
                detail += f" (last broker error: {self._last_error})"
            raise Unavailable(DEPENDENCY, f"{failed} of {len(messages)} messages to {topic} not delivered: {detail}")

    # -- consuming -----------------------------------------------------------------

    def subscribe(self, group: str) -> KafkaSubscription:
        return KafkaSubscription(self, group, self._consumer_config)

    def dead_letters(self, limit: int = 100) -> list[Delivery]:
        return self.messages(limit, topic=self.dead_letter_topic)

    def messages(self, limit: int = 1000, timeout: float = 10.0, topic: str | None = None) -> list[Delivery]:
        """Read a topic from the beginning (oldest first) without joining a group or committing."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

        topic = topic or self.topic
        reader = Consumer({**self._consumer_config, "group.id": f"wotr-reader-{uuid.uuid4().hex}", "enable.partition.eof": True})
        out: list[tuple[tuple[int, int, int], Delivery]] = []  # (timestamp, partition, offset)
        try:
            meta = self._metadata(reader).topics.get(topic)
            if meta is None or meta.error is not None:
                return []
            todo = set()
            for p in meta.partitions:
                low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=self.request_timeout)
                if high > low:
                    todo.add(p)
            reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
            deadline = time.monotonic() + timeout
            while todo and len(out) < limit and time.monotonic() < deadline:
                for msg in reader.consume(limit - len(out), timeout=0.2):
                    if msg.error() is None:
                        out.append(((msg.timestamp()[1], msg.partition(), msg.offset()), _delivery(msg)))
                    elif msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                    elif msg.error().fatal():
                        raise Unavailable(DEPENDENCY, f"reading {topic}: {msg.error().str()}")
        except KafkaException as e:
            raise Unavailable(DEPENDENCY, f"reading {topic}: {e.args[0].str()}") from e
        finally:
            reader.close()
        out.sort(key=lambda td: td[0])
        return [d for _, d in out[:limit]]


class KafkaSubscription:
    """A consumer-group member: batches in, synchronous commits of owned partitions out."""

    # Commit failures that mean "the group moved on": the new owner redelivers, nothing is lost.
    _LOST = ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID",
             "STALE_MEMBER_EPOCH", "FENCED_MEMBER_EPOCH", "_ASSIGNMENT_LOST", "UNKNOWN_TOPIC_OR_PART")

    def __init__(self, bus: KafkaEventBus, group: str, config: dict[str, Any]) -> None:
        from confluent_kafka import Consumer, KafkaError

        self._bus = bus
        self._lost_codes = {getattr(KafkaError, name) for name in self._LOST}
        self._owned: set[int] = set()
        self._committed: dict[int, int] = {}  # next offset committed per owned partition
        self._broker_down = ""
        self._fatal = ""
        self._consumer = Consumer({**config, "group.id": group, "error_cb": self._on_error})
        self._consumer.subscribe([bus.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.fatal():
            self._fatal = error.str()
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down = error.str()

    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        self._owned.update(tp.partition for tp in partitions)

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self._owned.discard(tp.partition)
            self._committed.pop(tp.partition, None)

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Wait up to `timeout` for a first message, then take what is already fetched."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            first = self._consumer.poll(timeout)
            raw = [first] if first is not None else []
            if raw and max_messages > 1:
                raw += self._consumer.consume(max_messages - 1, timeout=0)
        except KafkaException as e:
            raise Unavailable(DEPENDENCY, f"consume failed: {e.args[0].str()}") from e
        if self._fatal:
            raise Unavailable(DEPENDENCY, f"consumer failed: {self._fatal}")
        out = []
        for msg in raw:
            err = msg.error()
            if err is None:
                out.append(_delivery(msg))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise Unavailable(DEPENDENCY, f"consume failed: {err.str()}")
            else:
                log.warning("kafka consumer error (retried by the client): %s", err.str())
        if out:
            self._broker_down = ""
        elif self._broker_down:
            self._bus._metadata(self._consumer)  # raises Unavailable while the brokers stay down
            self._broker_down = ""
        return out

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Commit offset+1 of the highest delivery per partition this member still owns."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        highest: dict[int, int] = {}
        for d in deliveries:
            if d.topic == self._bus.topic:
                highest[d.partition] = max(highest.get(d.partition, -1), d.offset + 1)
        offsets = [
            TopicPartition(self._bus.topic, p, o)
            for p, o in highest.items()
            if p in self._owned and o > self._committed.get(p, -1)
        ]
        if skipped := set(highest) - self._owned:
            log.info("not committing revoked partitions %s: their new owner redelivers", sorted(skipped))
        if not offsets:
            return
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            code = e.args[0].code()
            if code in self._lost_codes or code == KafkaError._NO_OFFSET:
                log.warning("commit dropped after a rebalance (%s); messages will be redelivered", e.args[0].str())
                return
            raise Unavailable(DEPENDENCY, f"commit failed: {e.args[0].str()}") from e
        for tp in result or []:
            if tp.error is not None and tp.error.code() not in self._lost_codes:
                raise Unavailable(DEPENDENCY, f"commit of partition {tp.partition} failed: {tp.error.str()}")
            if tp.error is None and tp.partition in self._owned:
                self._committed[tp.partition] = max(self._committed.get(tp.partition, -1), tp.offset)

    def lag(self) -> dict[int, int]:
        """Per partition of the topic: end offset minus the group's committed offset.

        End offsets come from an admin client: on the consumer's own connection the
        request would queue behind its long-polling fetch.
        """
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        topic, timeout = self._bus.topic, self._bus.request_timeout
        admin = self._bus._admin()
        try:
            meta = self._bus._metadata(admin).topics.get(topic)
            if meta is None or meta.error is not None:
                raise Unavailable(DEPENDENCY, f"topic {topic} is missing")
            partitions = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            committed = {tp.partition: tp.offset for tp in self._consumer.committed(partitions, timeout=timeout)}

            def offsets(spec: Any, which: list[Any]) -> dict[int, int]:
                if not which:
                    return {}
                futures = admin.list_offsets({tp: spec for tp in which}, request_timeout=timeout)
                return {tp.partition: f.result(timeout=timeout + 1).offset for tp, f in futures.items()}

            ends = offsets(OffsetSpec.latest(), partitions)
            starts = offsets(OffsetSpec.earliest(), [tp for tp in partitions if committed.get(tp.partition, -1) < 0])
        except (KafkaException, TimeoutError) as e:
            raise Unavailable(DEPENDENCY, f"lag query failed: {e}") from e
        return {p: max(0, end - (committed[p] if committed.get(p, -1) >= 0 else starts.get(p, 0))) for p, end in ends.items()}

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._bus._send(self._bus.dead_letter_topic, [dead_letter_for(delivery, reason)])

    def close(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as e:  # already closed, or the broker is gone
            log.warning("closing kafka consumer: %s", e)
