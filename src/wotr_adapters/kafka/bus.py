"""`KafkaEventBus`: the event bus port on a Kafka-protocol broker (Kafka or Redpanda).

`start()` creates the topic and its dead-letter topic (partitions, replication factor and
`min.insync.replicas` from `topic_specs`) and opens one idempotent producer;
`publish` waits for the delivery report of every message, so a return means the brokers
acknowledged it (`acks=all`). `messages`/`dead_letters` read a topic back without joining
a group. The driver clients live in a shared `KafkaClients`; consumers are `subscription`'s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wotr_domain.archive import dead_letter_topic
from wotr_domain.errors import ConfigError, Unavailable
from wotr_domain.models import BusMessage, Delivery

from .clients import DEPENDENCY, KafkaClients, delivery_of
from .subscription import KafkaSubscription

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message
    from confluent_kafka.admin import AdminClient, NewTopic

__all__ = ["KafkaEventBus", "TopicSpec", "topic_specs"]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as wotr creates it: the arguments of confluent-kafka's `NewTopic`."""

    name: str
    num_partitions: int
    replication_factor: int
    config: dict[str, str]


def topic_specs(topic: str, partitions: int, replication: int, min_insync_replicas: int) -> list[TopicSpec]:
    """The events' topic and its dead-letter topic, with the same durability settings.

    The dead-letter topic has one partition (it stays in order); both get the replication
    factor and `min.insync.replicas`, so with the producer's `acks=all` a write is
    acknowledged once that many replicas have it (production: 3 and 2).
    """
    if min_insync_replicas > replication:
        raise ConfigError("min.insync.replicas",
                          f"{min_insync_replicas} is more than the replication factor {replication}: "
                          "no write could ever be acknowledged")
    config = {"min.insync.replicas": str(min_insync_replicas)}
    return [
        TopicSpec(topic, partitions, replication, dict(config)),
        TopicSpec(dead_letter_topic(topic), 1, replication, dict(config)),
    ]


class KafkaEventBus:
    """Topic `topic` plus its dead-letter topic `<topic>.dlq`, both created by `start()`
    with `replication` replicas and `min_insync_replicas` (an existing topic keeps its own)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int = 3,
        replication: int = 1,
        min_insync_replicas: int = 1,
        delivery_timeout: float = 10.0,
        request_timeout: float = 5.0,
        producer_config: dict[str, Any] | None = None,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic(topic)
        self.partitions = partitions
        self.replication = replication
        self.min_insync_replicas = min_insync_replicas
        topic_specs(topic, partitions, replication, min_insync_replicas)  # refuses an impossible setting now
        self.clients = KafkaClients(
            bootstrap,
            delivery_timeout=delivery_timeout,
            request_timeout=request_timeout,
            producer_config=producer_config,
            consumer_config=consumer_config,
        )

    @property
    def delivery_timeout(self) -> float:
        return self.clients.delivery_timeout

    @property
    def request_timeout(self) -> float:
        return self.clients.request_timeout

    @property
    def _client(self) -> dict[str, Any]:
        """Settings common to every client (read by tests)."""
        return self.clients.common_config

    @property
    def _producer_config(self) -> dict[str, Any]:
        """The producer's settings (read by the benchmarks)."""
        return self.clients.producer_config

    # -- lifecycle -----------------------------------------------------------------

    def new_topics(self, names: Sequence[str] | None = None) -> list[NewTopic]:
        """The `NewTopic`s `start()` creates (those named in `names`, default both)."""
        from confluent_kafka.admin import NewTopic

        specs = topic_specs(self.topic, self.partitions, self.replication, self.min_insync_replicas)
        return [NewTopic(s.name, num_partitions=s.num_partitions, replication_factor=s.replication_factor,
                         config=s.config) for s in specs if names is None or s.name in names]

    def start(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        admin = self.clients.admin()
        wanted = [self.topic, self.dead_letter_topic]
        existing = self.clients.metadata(admin).topics
        missing = self.new_topics([t for t in wanted if t not in existing])
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
            self._await_leaders(admin, wanted)
        self.clients.open_producer()

    def close(self) -> None:
        self.clients.close()

    def check(self) -> None:
        topics = self.clients.metadata(self.clients.current_producer).topics
        for name in (self.topic, self.dead_letter_topic):
            if name not in topics or topics[name].error is not None:
                raise Unavailable(DEPENDENCY, f"topic {name} is missing")

    def _await_leaders(self, admin: AdminClient, names: list[str]) -> None:
        """Wait until new topics have a leader for every partition, so a consumer that
        subscribes right after `start()` does not see them as unknown."""
        deadline = time.monotonic() + self.request_timeout
        while True:
            topics = self.clients.metadata(admin).topics
            if all(n in topics and topics[n].error is None and topics[n].partitions
                   and all(p.leader >= 0 for p in topics[n].partitions.values()) for n in names):
                return
            if time.monotonic() >= deadline:
                raise Unavailable(DEPENDENCY, f"topics {names} have no leader after {self.request_timeout:g}s")
            time.sleep(0.05)

    # -- producing -----------------------------------------------------------------

    def publish(self, messages: Sequence[BusMessage]) -> None:
        self._send(self.topic, messages)

    def _send(self, topic: str, messages: Sequence[BusMessage]) -> None:
        """Produce to `topic` and wait until every message is acknowledged or failed."""
        if not messages:
            return
        producer = self.clients.producer()
        self.clients.last_error = ""  # only errors seen during this call explain its failure
        deadline = time.monotonic() + self.delivery_timeout
        # One entry per delivery report (the error, or None): list.append is atomic, so a
        # report served by another publisher's poll needs no lock.
        reports: list[KafkaError | None] = []
        report = reports.append

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            report(err)

        produce = producer.produce
        for m in messages:
            while True:
                try:  # the driver encodes a str key and str header values as UTF-8 itself
                    produce(topic, m.value, m.key, headers=m.headers, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: serve delivery reports to make room
                    if time.monotonic() >= deadline:
                        raise Unavailable(DEPENDENCY, f"local producer queue full, {topic} not accepting") from None
                    producer.poll(0.1)
        while len(reports) < len(messages) and (remaining := deadline - time.monotonic()) > 0:
            # Short waits: another publisher's poll may serve our reports while we sleep.
            producer.poll(min(remaining, 0.01))
        pending = len(messages) - len(reports)
        errors = [err.str() for err in reports if err is not None]
        if pending or errors:
            failed = pending + len(errors)
            detail = errors[0] if errors else f"no delivery report within {self.delivery_timeout:g}s"
            last_error = self.clients.last_error
            if last_error and not errors:
                detail += f" (last broker error: {last_error})"
            raise Unavailable(DEPENDENCY, f"{failed} of {len(messages)} messages to {topic} not delivered: {detail}")

    # -- consuming -----------------------------------------------------------------

    def subscribe(self, group: str) -> KafkaSubscription:
        return KafkaSubscription(self, group)

    def dead_letters(self, limit: int = 100) -> list[Delivery]:
        return self.messages(limit, topic=self.dead_letter_topic)

    def messages(self, limit: int = 1000, timeout: float = 10.0, topic: str | None = None) -> list[Delivery]:
        """Read a topic from the beginning (oldest first) without joining a group or committing."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

        topic = topic or self.topic
        reader = self.clients.consumer({"group.id": f"wotr-reader-{uuid.uuid4().hex}", "enable.partition.eof": True})
        out: list[tuple[tuple[int, int, int], Delivery]] = []  # (timestamp, partition, offset)
        try:
            meta = self.clients.metadata(reader).topics.get(topic)
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
                        out.append(((msg.timestamp()[1], msg.partition(), msg.offset()), delivery_of(msg)))
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
