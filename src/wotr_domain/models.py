"""Domain models: what a client sends, what wotr stores, and what it answers.

All are frozen msgspec Structs. Struct constructors do not type-check, so untrusted bytes
are decoded at the edge with the decoders in `wotr_domain.codec`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "AnalyticsRow",
    "BatchItemResult",
    "BusMessage",
    "Delivery",
    "Event",
    "EventMetadata",
    "EventStatus",
    "IngestRequest",
    "ObjectRef",
    "Receipt",
    "Recorded",
]


class IngestRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /ingest`: the payload plus optional id, source, type and event time."""

    payload: dict[str, Any]
    id: str | None = None
    source: str | None = None
    type: str | None = None
    timestamp: datetime | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A normalised, accepted event: the raw JSON archived and carried on the bus."""

    id: str
    received_at: datetime
    payload: dict[str, Any]
    source: str | None = None
    type: str | None = None
    timestamp: datetime | None = None


class EventStatus(str, enum.Enum):
    """Where an accepted event stands: archived and recorded, or also published."""

    STORED = "stored"
    PUBLISHED = "published"


class EventMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """The metadata row of one event; `status` drives the outbox relay."""

    id: str
    object_key: str
    size: int
    checksum: str
    received_at: datetime
    status: EventStatus = EventStatus.STORED
    published_at: datetime | None = None
    source: str | None = None
    type: str | None = None
    line: int | None = None  # the event's line in an NDJSON batch object; None: the object is the event
    fingerprint: str | None = None  # SHA-256 of what the client sent (`wotr_domain.archive.fingerprint`)


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """Result of recording one metadata row: the row that is stored, and whether it is new."""

    metadata: EventMetadata
    created: bool


class ObjectRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where an object was put, its size and its SHA-256 checksum (hex)."""

    key: str
    size: int
    checksum: str


class BusMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message to publish: keyed by event id, the raw event JSON as value."""

    key: str
    value: bytes
    headers: dict[str, str] = {}


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """A message handed to a consumer, with the position it came from."""

    key: str | None
    value: bytes
    headers: dict[str, str]
    topic: str
    partition: int
    offset: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What the API answers for an accepted event."""

    id: str
    object_key: str
    status: EventStatus
    duplicate: bool = False
    line: int | None = None


class BatchItemResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of a batch answer: a receipt, or the error that rejected the item."""

    index: int
    id: str | None = None
    object_key: str | None = None
    line: int | None = None
    status: str | None = None
    duplicate: bool = False
    error: str | None = None
    code: str | None = None  # with `error`: invalid_event, invalid_id, payload_too_large, conflict, refused
    field: str | None = None


class AnalyticsRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `wotr.ingested_data`: `created_at` is when wotr accepted the event."""

    id: str
    created_at: datetime
    event_time: datetime | None
    source: str
    type: str
    payload: str
    object_key: str = ""
