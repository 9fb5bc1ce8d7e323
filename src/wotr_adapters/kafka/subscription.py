"""`KafkaSubscription`: one consumer-group member of a `KafkaEventBus`.

It commits explicitly, synchronously, and only for partitions it still owns, so a commit
after a rebalance never overwrites the new owner's progress. Lag is measured on the bus's
shared admin client; dead letters go out through the bus's producer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wotr_domain.archive import dead_letter_for
from wotr_domain.errors import Unavailable
from wotr_domain.models import Delivery
from wotr_domain.services.loader import DeliveryColumns

from .clients import DEPENDENCY

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from .bus import KafkaEventBus

__all__ = ["KafkaSubscription"]

log = logging.getLogger(__name__)


# Messages taken from the driver at a time. A chunk's message objects are dropped before
# the next chunk is taken, so they die young: thousands alive at once (a whole batch)
# outlived the garbage collector's young passes and made it walk the whole heap (measured
# on a drain of 200,000 events: 0.3 s of collections, 0.03 s in chunks of 200).
_CHUNK = 200
# The wait for a first message, taken in slices of this many seconds with the driver
# given back between them, so that a commit waits for one slice at most.
_WAIT_SLICE = 0.005


class _Polled(DeliveryColumns):
    """A polled batch, read from the driver's messages once, into columns: key, value and
    `object-key` header (what the loader reads), partition and offset (for the commit).
    A whole `Delivery` is made only when one is asked for, exactly as `delivery_of` makes
    it: headers other than one `object-key` are kept aside for it, as the driver gave them.
    Every message is from the subscription's one topic."""

    __slots__ = ("keys", "values", "object_keys", "partitions", "offsets", "topic", "_other_headers")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.keys: list[str | None] = []
        self.values: list[bytes] = []
        self.object_keys: list[str] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self._other_headers: dict[int, list[tuple[str, bytes | None]] | None] = {}

    def add(self, messages: list[Message]) -> None:
        """Append messages without errors."""
        keys, values, object_keys, others = self.keys, self.values, self.object_keys, self._other_headers
        for msg in messages:
            key = msg.key()
            keys.append(key.decode("utf-8", "replace") if key is not None else None)
            values.append(msg.value() or b"")
            headers = msg.headers()
            if headers is not None and len(headers) == 1 and headers[0][0] == "object-key":
                object_keys.append((headers[0][1] or b"").decode("utf-8", "replace"))
                continue
            object_key = ""
            for name, value in headers or ():
                if name == "object-key":  # the last one wins, as in a dict of the headers
                    object_key = (value or b"").decode("utf-8", "replace")
            object_keys.append(object_key)
            others[len(object_keys) - 1] = headers
        self.partitions += [msg.partition() for msg in messages]
        self.offsets += [msg.offset() for msg in messages]

    def _delivery(self, i: int) -> Delivery:
        if i in self._other_headers:
            headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (self._other_headers[i] or [])}
        else:
            headers = {"object-key": self.object_keys[i]}
        return Delivery(key=self.keys[i], value=self.values[i], headers=headers, topic=self.topic,
                        partition=self.partitions[i], offset=self.offsets[i])

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._delivery(i) for i in range(len(self))[index]]
        return self._delivery(range(len(self))[index])  # IndexError when out of range, like a list

    def __iter__(self):  # type: ignore[override]
        return map(self._delivery, range(len(self)))

    def highest(self) -> dict[int, int]:
        """Offset+1 of the highest message per partition."""
        highest: dict[int, int] = {}
        for partition, offset in zip(self.partitions, self.offsets):
            if offset >= highest.get(partition, -1):
                highest[partition] = offset + 1
        return highest


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

    def poll(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Wait up to `timeout` for a first message, then take what is already fetched.

        The batch is a `DeliveryColumns` (`_Polled`), or [] when nothing came."""
        from confluent_kafka import KafkaException

        out = _Polled(self._bus.topic)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with self._driver:
                    first = self._consumer.poll(min(_WAIT_SLICE, max(0.0, deadline - time.monotonic())))
                if first is not None or time.monotonic() >= deadline:
                    break
            if first is not None:
                self._take([first], out)
                taken = 1
                while taken < max_messages:
                    want = min(_CHUNK, max_messages - taken)
                    with self._driver:  # a chunk at a time: a commit waits for one chunk at most
                        chunk = self._consumer.consume(want, timeout=0)
                    taken += len(chunk)
                    self._take(chunk, out)
                    if len(chunk) < want:  # nothing more fetched yet
                        break
        except KafkaException as e:
            raise Unavailable(DEPENDENCY, f"consume failed: {e.args[0].str()}") from e
        if self._fatal:
            raise Unavailable(DEPENDENCY, f"consumer failed: {self._fatal}")
        if out:
            self._broker_down = ""
        elif self._broker_down:
            self._clients.metadata(self._consumer)  # raises Unavailable while the brokers stay down
            self._broker_down = ""
        return out if out else []

    @staticmethod
    def _take(messages: list[Message], out: _Polled) -> None:
        """Add the messages to `out`; an error message is skipped (logged) or, when fatal, raised."""
        from confluent_kafka import KafkaError

        if all(msg.error() is None for msg in messages):
            out.add(messages)
            return
        for msg in messages:
            err = msg.error()
            if err is None:
                out.add([msg])
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise Unavailable(DEPENDENCY, f"consume failed: {err.str()}")
            else:
                log.warning("kafka consumer error (retried by the client): %s", err.str())

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Commit offset+1 of the highest delivery per partition this member still owns."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        highest: dict[int, int] = {}
        if isinstance(deliveries, _Polled) and deliveries.topic == self._bus.topic:
            highest = deliveries.highest()
        else:
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
