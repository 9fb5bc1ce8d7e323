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
    # msgspec reports the location as "... - at `$.payload.x`"
    message = str(error)
    marker = "at `$."
    if marker in message:
        return message.split(marker, 1)[1].rstrip("`")
    return None


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
