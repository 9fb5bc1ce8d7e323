"""JSON encoding and decoding of domain models; decoders built once and reused."""

from __future__ import annotations

import hashlib

import msgspec

from .errors import InvalidEvent, MalformedJson
from .models import Event, IngestRequest

__all__ = ["decode_event", "decode_request", "decode_requests", "encode", "sha256_hex"]

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(IngestRequest)
_requests_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_event_decoder = msgspec.json.Decoder(Event)

encode = _encoder.encode


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _field_of(error: msgspec.ValidationError) -> str | None:
    """The dotted path of the offending field, from msgspec's message.

    msgspec says "... - at `$.payload.x`" for a bad value, and "Object missing required
    field `payload`" or "Object contains unknown field `foo`" for the object itself.
    """
    message = str(error)
    path = ""
    if " - at `$" in message:
        message, location = message.split(" - at `$", 1)
        path = location.rstrip("`").lstrip(".")
    for phrase in ("missing required field `", "contains unknown field `"):
        if phrase in message:
            name = message.split(phrase, 1)[1].split("`", 1)[0]
            return f"{path}.{name}" if path else name
    return path or None


def decode_request(data: bytes | msgspec.Raw) -> IngestRequest:
    """Decode one ingest request; malformed JSON and schema mismatches become `InvalidEvent`."""
    try:
        return _request_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise InvalidEvent(str(e), field=_field_of(e)) from e
    except msgspec.DecodeError as e:
        raise MalformedJson(str(e)) from e


def decode_requests(data: bytes) -> list[msgspec.Raw]:
    """Split a JSON array body into raw items, decoded one by one later."""
    try:
        return _requests_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise InvalidEvent("batch body must be a JSON array of events or NDJSON", field=None) from e
    except msgspec.DecodeError as e:
        raise MalformedJson(str(e)) from e


def decode_event(data: bytes) -> Event:
    """Decode an archived or published event; `InvalidEvent` when it is not one."""
    try:
        return _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidEvent(str(e)) from e
