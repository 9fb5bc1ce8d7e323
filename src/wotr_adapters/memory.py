"""In-memory adapters of all four ports: for unit tests and the `memory` profile.

They keep the same contracts as the real adapters (the contract suites prove it). Each
has an `outage` switch: while it is on, every call raises `Unavailable`, which lets
tests exercise the failure paths of the services without a real outage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from wotr_domain.archive import dead_letter_for, dead_letter_topic
from wotr_domain.codec import sha256_hex
from wotr_domain.errors import Conflict, NotFound, Refused, Unavailable
from wotr_domain.models import (
    AnalyticsRow,
    ArchivedEvent,
    BusMessage,
    Delivery,
    EventMetadata,
    EventStatus,
    ObjectRef,
    Recorded,
    WriteKey,
)

__all__ = ["InMemoryAnalyticsSink", "InMemoryEventBus", "InMemoryKeyStore", "InMemoryMetadataRepo", "InMemoryObjectStore"]


class _Switchable:
    """Lifecycle and the `outage` switch shared by the in-memory adapters."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.outage = False

    def _up(self) -> None:
        if self.outage:
            raise Unavailable(self.name, "simulated outage")

    def start(self) -> None:
        self._up()

    def close(self) -> None:
        pass

    def check(self) -> None:
        self._up()


class InMemoryObjectStore(_Switchable):
    name = "object store"

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, tuple[bytes, str]] = {}

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> ObjectRef:
        with self._lock:
            self._up()
            self.objects[key] = (bytes(data), content_type)
        return ObjectRef(key=key, size=len(data), checksum=sha256_hex(data))

    def get(self, key: str) -> bytes:
        with self._lock:
            self._up()
            try:
                return self.objects[key][0]
            except KeyError:
                raise NotFound(f"object {key!r} does not exist") from None

    def exists(self, key: str) -> bool:
        with self._lock:
            self._up()
            return key in self.objects

    def delete(self, key: str) -> None:
        with self._lock:
            self._up()
            self.objects.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            self._up()
            keys = sorted(k for k in self.objects if k.startswith(prefix))
        return iter(keys)

    def location(self, key: str = "") -> str:
        raise NotFound(f"an in-memory object store has no location a reader outside the process could use ({key!r})")


class InMemoryEventBus(_Switchable):
    """One partition per topic; committed offsets per consumer group."""

    name = "event bus"

    def __init__(self, topic: str = "ingest-events") -> None:
        super().__init__()
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic(topic)
        self.logs: dict[str, list[BusMessage]] = {topic: [], self.dead_letter_topic: []}
        self.committed: dict[str, int] = {}

    def publish(self, messages: Sequence[BusMessage]) -> None:
        with self._lock:
            self._up()
            self.logs[self.topic].extend(messages)

    def messages(self, topic: str | None = None) -> list[BusMessage]:
        with self._lock:
            return list(self.logs[topic or self.topic])

    def subscribe(self, group: str) -> _InMemorySubscription:
        with self._lock:
            self._up()
            return _InMemorySubscription(self, group)

    def dead_letters(self, limit: int = 100) -> list[Delivery]:
        with self._lock:
            self._up()
            return [_delivery(self.dead_letter_topic, i, m) for i, m in enumerate(self.logs[self.dead_letter_topic][:limit])]


class _InMemorySubscription:
    def __init__(self, bus: InMemoryEventBus, group: str) -> None:
        self._bus = bus
        self._group = group
        self._position = bus.committed.get(group, 0)

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        with self._bus._lock:
            self._bus._up()
            log = self._bus.logs[self._bus.topic]
            start, end = self._position, min(len(log), self._position + max_messages)
            self._position = end
            return [_delivery(self._bus.topic, i, log[i]) for i in range(start, end)]

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self._bus._lock:
            self._bus._up()
            last = max(d.offset for d in deliveries) + 1
            self._bus.committed[self._group] = max(self._bus.committed.get(self._group, 0), last)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._bus._lock:
            self._bus._up()
            self._bus.logs[self._bus.dead_letter_topic].append(dead_letter_for(delivery, reason))

    def lag(self) -> dict[int, int]:
        with self._bus._lock:
            return {0: len(self._bus.logs[self._bus.topic]) - self._bus.committed.get(self._group, 0)}

    def close(self) -> None:
        pass


def _delivery(topic: str, offset: int, m: BusMessage) -> Delivery:
    return Delivery(key=m.key or None, value=m.value, headers=dict(m.headers), topic=topic, partition=0, offset=offset)


class InMemoryMetadataRepo(_Switchable):
    """`clock` stamps when rows are recorded (the relay's grace period runs from then)."""

    name = "metadata repo"

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self._clock = clock or (lambda: datetime.now(UTC))
        self.rows: dict[str, EventMetadata] = {}
        self._recorded_at: dict[str, datetime] = {}
        self._leases: dict[str, datetime] = {}
        # Fault injection: rows this predicate matches are refused, as a real database
        # refuses a value it can never hold (the whole statement fails, nothing is written).
        self.refuse: Callable[[EventMetadata], bool] | None = None

    def record(self, items: Sequence[EventMetadata]) -> list[Recorded]:
        with self._lock:
            self._up()
            refused = [i.id for i in items if self.refuse is not None and self.refuse(i)]
            if refused:
                raise Refused(self.name, f"rows {refused} refused")
            out = []
            for item in items:
                existing = self.rows.get(item.id)
                if existing is None:
                    self.rows[item.id] = item
                    self._recorded_at[item.id] = self._clock()
                    out.append(Recorded(metadata=item, created=True))
                else:
                    out.append(Recorded(metadata=existing, created=False))
            return out

    def get(self, event_id: str) -> EventMetadata:
        with self._lock:
            self._up()
            try:
                return self.rows[event_id]
            except KeyError:
                raise NotFound(f"event {event_id!r} does not exist") from None

    def find(self, event_ids: Sequence[str]) -> dict[str, EventMetadata]:
        with self._lock:
            self._up()
            return {i: self.rows[i] for i in event_ids if i in self.rows}

    def mark_published(self, event_ids: Sequence[str], at: datetime) -> int:
        with self._lock:
            self._up()
            changed = 0
            for i in set(event_ids):
                row = self.rows.get(i)
                if row is not None and row.status is EventStatus.STORED:
                    self.rows[i] = msgspec.structs.replace(row, status=EventStatus.PUBLISHED, published_at=at)
                    self._leases.pop(i, None)
                    changed += 1
            return changed

    def claim_pending(self, limit: int, older_than: datetime, lease_seconds: float) -> list[EventMetadata]:
        with self._lock:
            self._up()
            now = self._clock()
            due = sorted(
                (
                    r
                    for r in self.rows.values()
                    if r.status is EventStatus.STORED
                    and self._recorded_at[r.id] < older_than
                    and self._leases.get(r.id, now) <= now
                ),
                key=lambda r: (r.received_at, r.id),
            )[:limit]
            for r in due:
                self._leases[r.id] = now + timedelta(seconds=lease_seconds)
            return due

    def release(self, event_ids: Sequence[str]) -> int:
        with self._lock:
            self._up()
            released = 0
            for i in set(event_ids):
                row = self.rows.get(i)
                if row is not None and row.status is EventStatus.STORED and self._leases.pop(i, None) is not None:
                    released += 1
            return released

    def received_between(self, start: datetime, end: datetime) -> Iterator[EventMetadata]:
        with self._lock:
            self._up()
            rows = [r for r in self.rows.values() if start <= r.received_at < end]
        return iter(sorted(rows, key=lambda r: (r.object_key, -1 if r.line is None else r.line)))

    def archived_between(self, start: datetime, end: datetime) -> Iterator[ArchivedEvent]:
        with self._lock:
            self._up()
            rows = [ArchivedEvent(r.object_key, r.line, r.id, r.checksum)
                    for r in self.rows.values() if start <= r.received_at < end]
        return iter(rows)

    def count(self, status: EventStatus | None = None) -> int:
        with self._lock:
            self._up()
            return sum(1 for r in self.rows.values() if status is None or r.status is status)

    def prune_published(self, received_before: datetime, limit: int) -> int:
        with self._lock:
            self._up()
            doomed = [i for i, r in self.rows.items()
                      if r.status is EventStatus.PUBLISHED and r.received_at < received_before][:max(limit, 0)]
            for i in doomed:
                del self.rows[i]
                self._recorded_at.pop(i, None)
                self._leases.pop(i, None)
            return len(doomed)


class InMemoryAnalyticsSink(_Switchable):
    """Fault switches besides `outage` (a write fails as a whole and writes nothing, like
    one INSERT): `refuse(row)` true makes it raise `Refused` (data it will never take);
    `unavailable_for(row)` true makes it raise `Unavailable` although `check()` passes (a
    failure the sink does not explain); `write_failures` > 0 fails that many next writes
    with `Unavailable` (a transient glitch)."""

    name = "analytics sink"

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, AnalyticsRow] = {}
        self.writes = 0
        self.refuse: Callable[[AnalyticsRow], bool] | None = None
        self.unavailable_for: Callable[[AnalyticsRow], bool] | None = None
        self.write_failures = 0

    def write(self, rows: Sequence[AnalyticsRow]) -> None:
        with self._lock:
            self._up()
            if self.write_failures > 0:
                self.write_failures -= 1
                raise Unavailable(self.name, "simulated write failure")
            for row in rows:
                if self.refuse is not None and self.refuse(row):
                    raise Refused(self.name, f"row {row.id!r} refused (simulated)")
                if self.unavailable_for is not None and self.unavailable_for(row):
                    raise Unavailable(self.name, f"write of row {row.id!r} failed (simulated)")
            for row in rows:
                self.rows[row.id] = row
            self.writes += 1

    def latest(self, limit: int = 10) -> list[AnalyticsRow]:
        with self._lock:
            self._up()
            return sorted(self.rows.values(), key=lambda r: (r.created_at, r.id), reverse=True)[:limit]

    def count(self) -> int:
        with self._lock:
            self._up()
            return len(self.rows)


class InMemoryKeyStore(_Switchable):
    """Write keys of the `memory` profile: they live as long as the process."""

    name = "key store"

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, WriteKey] = {}

    def add(self, key: WriteKey) -> None:
        with self._lock:
            self._up()
            if key.id in self.keys:
                raise Conflict(f"write key {key.id!r} exists already")
            self.keys[key.id] = key

    def get(self, key_id: str) -> WriteKey:
        with self._lock:
            self._up()
            try:
                return self.keys[key_id]
            except KeyError:
                raise NotFound(f"write key {key_id!r} does not exist") from None

    def list(self) -> list[WriteKey]:
        with self._lock:
            self._up()
            return sorted(self.keys.values(), key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str, at: datetime) -> WriteKey:
        with self._lock:
            key = self.get(key_id)
            if key.revoked_at is None:
                key = self.keys[key_id] = msgspec.structs.replace(key, revoked_at=at)
            return key
