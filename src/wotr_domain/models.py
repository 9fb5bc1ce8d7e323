"""Domain models: what a client sends, what wotr stores, and what it answers.

All are frozen msgspec Structs. Struct constructors do not type-check, so untrusted bytes
are decoded at the edge with the decoders in `wotr_domain.codec`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "AnalyticsRow",
    "ArchivedEvent",
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
    "WriteKey",
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
    fingerprint: str | None = None  # SHA-256 of what the client sent with its own id (`wotr_domain.archive.fingerprint`)


class ArchivedEvent(msgspec.Struct, frozen=True, gc=False):
    """Where one event's bytes are in the archive and their SHA-256: the part of its
    metadata row a reader of the archive (the ETL) needs to find and verify them."""

    object_key: str
    line: int | None  # as `EventMetadata.line`: None when the object is the event
    id: str
    checksum: str


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


_WRITE_KEY = re.compile(r"wk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


class WriteKey(msgspec.Struct, frozen=True, kw_only=True):
    """A write key as stored: never the key itself, only its SHA-256.

    The key a client sends is `wk_<id>_<secret>`: `id` is 16 hex digits that find the
    stored record, `secret` 32 random bytes (URL-safe base64, 43 characters; no `:`, so
    it can be an HTTP Basic user name). It is shown once, by `issue`. The secret has 256
    bits of entropy, so a plain SHA-256 (no slow KDF) is safe at rest, and checking it
    costs one hash and a constant-time comparison. `source`, when set, stamps every event
    sent with the key. A revoked key (`revoked_at` set) authenticates nobody.
    """

    id: str
    name: str
    secret_hash: str
    created_at: datetime
    source: str | None = None
    revoked_at: datetime | None = None

    @classmethod
    def issue(cls, name: str, created_at: datetime, source: str | None = None) -> tuple[WriteKey, str]:
        """A new key record and the key itself (to show once; only its hash is kept)."""
        key_id = secrets.token_hex(8)
        key = f"wk_{key_id}_{secrets.token_urlsafe(32)}"
        return cls(id=key_id, name=name, source=source, created_at=created_at, secret_hash=cls.hash(key)), key

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    @staticmethod
    def id_of(key: str) -> str | None:
        """The key id a presented key names, or None when it is not shaped like a key."""
        match = _WRITE_KEY.fullmatch(key)
        return match.group(1) if match else None

    def verifies(self, key: str) -> bool:
        """The presented `key` is this one (constant-time comparison of the hashes)."""
        return hmac.compare_digest(self.secret_hash, self.hash(key))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None
