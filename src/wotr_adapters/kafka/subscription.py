"""`KafkaSubscription`: one consumer-group member of a `KafkaEventBus`.

It commits explicitly, synchronously, and only for partitions it still owns, so a commit
after a rebalance never overwrites the new owner's progress. Lag is measured on the bus's
shared admin client; dead letters go out through the bus's producer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wotr_domain.archive import dead_letter_for
from wotr_domain.errors import Unavailable
from wotr_domain.models import Delivery

from .clients import DEPENDENCY, delivery_of

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from .bus import KafkaEventBus

__all__ = ["KafkaSubscription"]

log = logging.getLogger(__name__)


class KafkaSubscription:
    """A consumer-group member: batches in, synchronous commits of owned partitions out."""

    # Commit failures that mean "the group moved on": the new owner redelivers, nothing is lost.
    _LOST = ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID",
             "STALE_MEMBER_EPOCH", "FENCED_MEMBER_EPOCH", "_ASSIGNMENT_LOST", "UNKNOWN_TOPIC_OR_PART")

    def __init__(self, bus: KafkaEventBus, group: str) -> None:
        from confluent_kafka import KafkaError

        self._bus = bus
        self._clients = bus.clients
        self._lost_codes = {getattr(KafkaError, name) for name in self._LOST}
        self._owned: set[int] = set()
        self._committed: dict[int, int] = {}  # next offset committed per owned partition
        self._broker_down = ""
        self._fatal = ""
        # The driver's synchronous commit waits on the queue a concurrent poll is serving:
        # a consumer that polls on one thread and commits on another takes turns here.
        self._driver = threading.Lock()
        self._consumer: Consumer = self._clients.consumer({"group.id": group, "error_cb": self._on_error})
        self._consumer.subscribe([bus.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def _on_error(self, error: KafkaError) -> None:
        from confluent_kafka import KafkaError

        if error.fatal():
            self._fatal = error.str()
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down = error.str()

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned.update(tp.partition for tp in partitions)

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._owned.discard(tp.partition)
            self._committed.pop(tp.partition, None)

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Wait up to `timeout` for a first message, then take what is already fetched."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            with self._driver:
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
                out.append(delivery_of(msg))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise Unavailable(DEPENDENCY, f"consume failed: {err.str()}")
            else:
                log.warning("kafka consumer error (retried by the client): %s", err.str())
        if out:
            self._broker_down = ""
        elif self._broker_down:
            self._clients.metadata(self._consumer)  # raises Unavailable while the brokers stay down
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
            with self._driver:
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

        End offsets come from the admin client: on the consumer's own connection the
        request would queue behind its long-polling fetch.
        """
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        topic, timeout = self._bus.topic, self._clients.request_timeout
        admin = self._clients.admin()
        try:
            meta = self._clients.metadata(admin).topics.get(topic)
            if meta is None or meta.error is not None:
                raise Unavailable(DEPENDENCY, f"topic {topic} is missing")
            partitions = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            with self._driver:  # like commit, it waits on the queue a concurrent poll serves
                committed = {tp.partition: tp.offset for tp in self._consumer.committed(partitions, timeout=timeout)}

            def offsets(spec: OffsetSpec, which: list[TopicPartition]) -> dict[int, int]:
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
