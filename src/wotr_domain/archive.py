"""Where an event's bytes go and how they travel: the archive's keys and lines, the bus
message that carries them, and the dead letter that parks a message no one can load.

Keys. An archive write never reuses a key, so no write can overwrite another's bytes:

- a single event whose id wotr generated: `raw/dt=YYYY-MM-DD/<id>.json` (the id is fresh,
  nothing else can write that key);
- a single event whose id the client chose: `raw/dt=YYYY-MM-DD/<id>.<attempt>.json`, with a
  fresh UUIDv7 per attempt, because a client's retries of one id may race each other;
- events written together (a batch, or concurrent requests flushed together):
  `raw/dt=YYYY-MM-DD/batch-<uuid7>.ndjson`, one event per line.

The metadata row of an event names its object and line and holds the SHA-256 of exactly
the event's bytes. Whatever races with it, the attempt whose metadata row was recorded
first is the event; the other attempts' objects are removed, and an object (or a line)
that no metadata row names is not an event. Readers of the archive take an event's
bytes only through `event_bytes`, which verifies the checksum.

Bus message. The bus carries exactly the archived bytes (JSON), keyed by event id, with
headers naming the object and (for an NDJSON object) the line: nothing else, because a
consumer pays for every header of every message. A dead letter is the
original message with two more headers: `dlq-reason` and `dlq-source`
(`topic/partition/offset`), on the topic `<topic>.dlq`.

Content fingerprint. A client's retry carries the same content but is archived with
its own reception time, so archived bytes cannot tell a retry from a different event
reusing the id. `fingerprint` hashes what the client sent (id, payload, source, type,
timestamp; object keys in sorted order) and decides it: same fingerprint, a duplicate
answered with the first receipt; another fingerprint, a conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec

from .errors import NotFound, WotrError
from .ids import new_event_id
from .models import BusMessage, Delivery, EventMetadata

__all__ = [
    "ChecksumMismatch",
    "RawObject",
    "batch_key_for",
    "bus_message_for",
    "dead_letter_for",
    "dead_letter_topic",
    "event_bytes",
    "fingerprint",
    "line_of",
    "object_key_for",
    "raw_object",
    "where",
]


class ChecksumMismatch(WotrError):
    """An archived event's bytes are not those whose checksum its metadata holds."""

    def __init__(self, event_id: str, where: str, expected: str, actual: str) -> None:
        super().__init__(f"event {event_id}: bytes at {where} have checksum {actual}, metadata says {expected}")
        self.event_id = event_id
        self.where = where


def _day(received_at: datetime) -> str:
    return f"raw/dt={received_at.astimezone(UTC):%Y-%m-%d}"


def object_key_for(event_id: str, received_at: datetime, *, client_id: bool = False) -> str:
    """A single event's object key; a client-chosen id gets a fresh attempt suffix."""
    if client_id:
        return f"{_day(received_at)}/{event_id}.{new_event_id()}.json"
    return f"{_day(received_at)}/{event_id}.json"


def batch_key_for(received_at: datetime) -> str:
    """The NDJSON object of events written together, one event per line."""
    return f"{_day(received_at)}/batch-{new_event_id()}.ndjson"


class RawObject(NamedTuple):
    """Events written together, as archived: the object's key, each event's line in it
    (None: the object is the event), its bytes and its content type."""

    key: str
    lines: Sequence[int | None]
    data: bytes
    content_type: str


def raw_object(first_id: str, received_at: datetime, bodies: Sequence[bytes], *, client_id: bool = False) -> RawObject:
    """How events written together are archived: one event as its own object (keyed by its
    id, `first_id`), several as one NDJSON object, one event per line numbered from 0."""
    if len(bodies) == 1:
        return RawObject(object_key_for(first_id, received_at, client_id=client_id), (None,), bodies[0],
                         "application/json")
    return RawObject(batch_key_for(received_at), range(len(bodies)), b"\n".join(bodies) + b"\n",
                     "application/x-ndjson")


def line_of(obj: bytes, line: int | None) -> bytes:
    """The event's bytes in a raw object: the whole object, or one line of an NDJSON object."""
    if line is None:
        return obj
    lines = obj.split(b"\n")
    if not 0 <= line < len(lines) or not lines[line]:
        raise NotFound(f"line {line} is not in the object")
    return lines[line]


def where(meta: EventMetadata) -> str:
    """`key` or `key line N`, for messages."""
    return meta.object_key if meta.line is None else f"{meta.object_key} line {meta.line}"


def event_bytes(meta: EventMetadata, obj: bytes) -> bytes:
    """The event's archived bytes, verified against its metadata checksum.

    Raises `NotFound` when the line is missing and `ChecksumMismatch` when the bytes are
    not the accepted ones: either way they are a fault to record, never data.
    """
    body = line_of(obj, meta.line)
    actual = hashlib.sha256(body).hexdigest()
    if actual != meta.checksum:
        raise ChecksumMismatch(meta.id, where(meta), meta.checksum, actual)
    return body


class _Content(msgspec.Struct, frozen=True, array_like=True):
    id: str
    payload: dict
    source: str | None
    type: str | None
    timestamp: datetime | None


_canonical = msgspec.json.Encoder(order="sorted").encode


def fingerprint(
    event_id: str, payload: dict, source: str | None, type: str | None, timestamp: datetime | None
) -> str:
    """SHA-256 of what the client sent, independent of reception time and key order."""
    return hashlib.sha256(_canonical(_Content(event_id, payload, source, type, timestamp))).hexdigest()


def bus_message_for(event_id: str, body: bytes, object_key: str, line: int | None = None) -> BusMessage:
    """The bus carries the archived bytes, keyed by id; headers name the object and line."""
    headers = {"object-key": object_key}
    if line is not None:
        headers["object-line"] = str(line)
    return BusMessage(key=event_id, value=body, headers=headers)


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def dead_letter_for(delivery: Delivery, reason: str) -> BusMessage:
    """The message as it came, plus why it was parked and where it came from."""
    headers = dict(delivery.headers) | {
        "dlq-reason": reason,
        "dlq-source": f"{delivery.topic}/{delivery.partition}/{delivery.offset}",
    }
    return BusMessage(key=delivery.key or "", value=delivery.value, headers=headers)
