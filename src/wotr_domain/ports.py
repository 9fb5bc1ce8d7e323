"""The ports wotr's services depend on, in domain terms only: the four of the pipeline
(ObjectStore, EventBus, MetadataRepo, AnalyticsSink) and the KeyStore of the write keys.

Every port has a lifecycle (`start`/`close`) and a readiness probe (`check`), and raises
only `wotr_domain.errors` exceptions: `NotFound`, `Unavailable`, ... never a driver's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from .models import (
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

__all__ = ["AnalyticsSink", "EventBus", "KeyStore", "MetadataRepo", "ObjectStore", "Subscription"]


@runtime_checkable
class Lifecycle(Protocol):
    def start(self) -> None:
        """Create what must exist (bucket, schema, topic); idempotent."""

    def close(self) -> None:
        """Release connections; flush what is buffered."""

    def check(self) -> None:
        """Raise `Unavailable` when the dependency cannot serve requests now."""


@runtime_checkable
class ObjectStore(Lifecycle, Protocol):
    """Raw event archive: immutable blobs under keys like `raw/dt=YYYY-MM-DD/<id>.json`."""

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> ObjectRef: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; `NotFound` when there is none."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, in lexicographic order."""

    def location(self, key: str = "") -> str:
        """The URL where a reader outside the adapter finds `key` (a key or a prefix; the
        store's root when empty): `file:///...` for a directory, `s3://bucket/...` for a
        bucket. `NotFound` when the store has no location outside the process."""


@runtime_checkable
class Subscription(Protocol):
    """The consuming side of a bus: batches in, explicit commits out (at-least-once)."""

    def poll(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to `max_messages` deliveries, waiting at most `timeout` seconds for the first."""

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Mark everything up to these deliveries as processed for this group."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Park an undecodable message in the dead-letter topic with the reason."""

    def lag(self) -> dict[int, int]:
        """Messages not yet committed by this group, per partition (for monitoring)."""

    def close(self) -> None: ...


@runtime_checkable
class EventBus(Lifecycle, Protocol):
    """Event stream keyed by event id. `publish` returns only once every message is durable."""

    def publish(self, messages: Sequence[BusMessage]) -> None:
        """Durably append all messages or raise `Unavailable` naming what failed."""

    def subscribe(self, group: str) -> Subscription:
        """A consumer in `group`, starting after the group's last committed position."""

    def dead_letters(self, limit: int = 100) -> list[Delivery]:
        """Read back the dead-letter topic (oldest first), for operators and checks."""


@runtime_checkable
class MetadataRepo(Lifecycle, Protocol):
    """Event metadata and status; doubles as the outbox for events not yet published."""

    def record(self, items: Sequence[EventMetadata]) -> list[Recorded]:
        """Insert each row if its id is absent; return the stored row and whether it is new.

        `Refused` when the repository will never accept a row (nothing is written).
        """

    def get(self, event_id: str) -> EventMetadata:
        """The row of `event_id`; `NotFound` when there is none."""

    def find(self, event_ids: Sequence[str]) -> dict[str, EventMetadata]:
        """The rows that exist among `event_ids`."""

    def mark_published(self, event_ids: Sequence[str], at: datetime) -> int:
        """Set status `published` for these ids (one round trip); returns rows changed."""

    def claim_pending(self, limit: int, older_than: datetime, lease_seconds: float) -> list[EventMetadata]:
        """Lease up to `limit` rows still `stored`, recorded before `older_than`, oldest first.

        The cut-off applies to when the row was recorded, not to the event's reception
        time: a large batch can take longer to archive than the grace period, and its rows
        must not be republished while the API is still publishing them.

        A leased row is not handed to another caller until the lease expires (or is
        `release`d), so several relays can run at once without publishing the same rows
        in parallel.
        """

    def release(self, event_ids: Sequence[str]) -> int:
        """Clear the lease of those of `event_ids` that are still `stored` and hold one
        (expired or not), in one round trip; returns how many it released.

        A released row can be claimed again at once (`claim_pending`). Published rows and
        unknown ids are left alone and not counted. A caller releases only rows it claimed
        itself and whose lease has not expired: the lease is not tied to its holder, so a
        release after expiry would clear another caller's claim of the same rows.
        """

    def received_between(self, start: datetime, end: datetime) -> Iterator[EventMetadata]:
        """Rows of the events received in [start, end), by object key and line.

        What readers of the archive (ETL, replay) use to tell events from orphan objects
        and to verify each event's bytes against its checksum.
        """

    def archived_between(self, start: datetime, end: datetime) -> Iterator[ArchivedEvent]:
        """Where the events received in [start, end) are archived, with their checksums, in
        no given order.

        The columns of `received_between` the ETL uses, read without the rest of each row
        and without its order: for a million events, whole rows in order took 4-5 s of
        the ETL's run, these 2.
        """

    def count(self, status: EventStatus | None = None) -> int:
        """Rows in total, or with the given status."""

    def prune_published(self, received_before: datetime, limit: int) -> int:
        """Delete up to `limit` `published` rows of events received before `received_before`
        (one short transaction); returns how many went. `stored` rows (the outbox) are never
        deleted. The retention job calls it until it returns 0.

        An event whose row is gone is no longer one to the archive's readers (ETL, replay),
        and its id is free again: the bound must exceed how far back they read and clients retry.
        """


@runtime_checkable
class AnalyticsSink(Lifecycle, Protocol):
    """Analytics table `ingested_data`: idempotent by event id."""

    def write(self, rows: Sequence[AnalyticsRow]) -> None:
        """Insert the batch in one statement; rows whose id exists collapse to one."""

    def latest(self, limit: int = 10) -> list[AnalyticsRow]:
        """Most recent rows by `created_at`, deduplicated by id."""

    def count(self) -> int:
        """Distinct events loaded."""


@runtime_checkable
class KeyStore(Lifecycle, Protocol):
    """Write keys, stored hashed (`WriteKey`); the API looks them up by key id."""

    def add(self, key: WriteKey) -> None:
        """Store a new key; `Conflict` when its id exists already."""

    def get(self, key_id: str) -> WriteKey:
        """The key with this id, revoked or not; `NotFound` when there is none."""

    def list(self) -> list[WriteKey]:
        """Every key, revoked ones included, oldest first."""

    def revoke(self, key_id: str, at: datetime) -> WriteKey:
        """Mark the key revoked at `at` and return it; revoking it again keeps the first
        time. `NotFound` when there is no such key."""
