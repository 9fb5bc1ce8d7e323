"""JSON encoding and decoding of domain models; decoders built once and reused.

Every decoder refuses JSON that nests deeper than `MAX_DEPTH` levels (counting the
payload object) with `InvalidEvent`, before msgspec sees it: msgspec decodes nested
containers recursively, and near Python's recursion limit it raises `RecursionError`
(an HTTP 500, a consumer crash) at a depth that depends on how deep the caller's stack
already is. The check costs two `bytes.count` calls for ordinary bodies; only a body with
more than `MAX_DEPTH` brackets is measured, iteratively and at C speed.
"""

from __future__ import annotations

import hashlib
import re
from itertools import accumulate

from datetime import datetime

import msgspec

from .errors import InvalidEvent, MalformedJson
from .models import Event, IngestRequest

__all__ = [
    "MAX_DEPTH",
    "EventFields",
    "decode_event",
    "decode_event_fields",
    "decode_request",
    "decode_request_array",
    "decode_requests",
    "encode",
    "nesting_exceeds",
    "sha256_hex",
]

# How deep a payload may nest: the payload object itself is level 1, so
# `{"payload": {"a": {"b": [1]}}}` has depth 3. Real events nest a handful of levels; 64
# leaves room for any of them while keeping every recursive step downstream (msgspec
# decode and encode, the consumer, the ETL, ClickHouse's JSON functions) hundreds of
# frames away from a recursion limit, whatever thread or stack it runs on.
MAX_DEPTH = 64
_ENVELOPE_DEPTH = MAX_DEPTH + 1  # the request or event object around the payload

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(IngestRequest)
_requests_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_request_array_decoder = msgspec.json.Decoder(list[IngestRequest])
_event_decoder = msgspec.json.Decoder(Event)

encode = _encoder.encode

# Keep only brackets, as signed steps of the depth: an opening one +1, a closing one -1.
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"{}[]")
_NOT_MARKS = bytes(c for c in range(256) if c not in b'{}[]"')
_TO_STEPS = bytes.maketrans(b"{[}]", b"\x01\x01\xff\xff")
_CHUNK = 1 << 16  # the depth walk stops after the first chunk that goes too deep
# Tokens of the iterative array splitter: a string, a lone quote (an unterminated
# string), a run of opening brackets, a run of closing brackets, a comma.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[{]+|[\]}]+|,', re.DOTALL)
_WHITESPACE = b" \t\r\n"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON text `data` nests arrays and objects deeper than `limit` levels.

    Exact for well-formed JSON; for malformed JSON an upper bound of the depth a parser
    reaches before the error, so `False` always means a parser stays within `limit`.
    Never recursive, and at C speed: strings are cut out, the brackets kept as +1/-1
    bytes, innermost pairs removed while that shrinks them fast, and the running sum of
    the rest taken chunk by chunk (stopping at the first chunk that goes too deep).
    """
    if data.count(b"{") + data.count(b"[") <= limit:  # the common case: no walk needed
        return False
    steps = _steps(data)
    # Wide, shallow JSON (arrays of small objects) collapses in a few rounds of removing
    # every innermost pair; each round takes one level off.
    removed = 0
    while steps.count(b"\x01") + removed > limit:
        shorter = steps.replace(b"\x01\xff", b"")
        if len(shorter) == len(steps):  # no pair left, only unbalanced brackets: walk them
            break
        removed += 1
        if removed > limit:  # that round removed a pair `removed` levels deep
            return True
        collapsing = 2 * len(shorter) <= len(steps)
        steps = shorter
        if not collapsing:  # deep rather than wide: walk what is left
            break
    else:
        return False
    signed = memoryview(steps).cast("b")
    depth = 0
    for start in range(0, len(steps), _CHUNK):
        end = start + _CHUNK
        if max(accumulate(signed[start:end], initial=depth)) + removed > limit:
            return True
        depth += steps.count(b"\x01", start, end) - steps.count(b"\xff", start, end)
    return False


def _steps(data: bytes) -> bytes:
    """The brackets of `data` outside strings, as +1/-1 bytes, up to an unterminated string
    (where a parser stops)."""
    if b'"' not in data:
        return data.translate(_TO_STEPS, _NOT_BRACKETS)
    if b"\\" in data:  # drop the escapes that could hide a quote: first \\, then \"
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Now quotes alternate, opening and closing strings.
    marks = data.translate(None, _NOT_MARKS)  # brackets and quotes
    # No string held a bracket (the usual case) when every run of quotes in `marks` has an
    # even length (`count` pairs each run's quotes from its start): the runs then start at
    # even quotes, so each pair is one string, and dropping the quotes leaves the brackets.
    if 2 * marks.count(b'""') == marks.count(b'"'):
        return marks.translate(_TO_STEPS, b'"')
    # Every other piece between quotes is a string; with an odd count of quotes the last
    # piece, an unterminated string, is dropped too.
    return b"".join(marks.split(b'"')[0::2]).translate(_TO_STEPS)


def _too_deep() -> InvalidEvent:
    return InvalidEvent(
        f"payload nests deeper than the limit of {MAX_DEPTH} levels (the payload object is level 1)", field="payload"
    )


def _bytes(data: bytes | msgspec.Raw) -> bytes:
    return data if type(data) is bytes else bytes(data)  # noqa: E721 - exact type: the fast path


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
    """Decode one ingest request; malformed JSON, schema mismatches and nesting deeper
    than `MAX_DEPTH` become `InvalidEvent`."""
    data = _bytes(data)
    if nesting_exceeds(data, _ENVELOPE_DEPTH):
        raise _too_deep()
    try:
        return _request_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise InvalidEvent(str(e), field=_field_of(e)) from e
    except msgspec.DecodeError as e:
        raise MalformedJson(str(e)) from e
    except RecursionError:  # unreachable within the limit; never let it escape as a 500
        raise _too_deep() from None


def decode_request_array(data: bytes) -> list[IngestRequest] | None:
    """Every request of a JSON array body in one pass, or None unless the body is an array
    of valid requests within the nesting limit (then `decode_requests` splits it and each
    item is decoded, or refused, alone: same requests, same errors).

    One call into msgspec instead of one per item: half the decoding cost of a batch.
    """
    if nesting_exceeds(data, _ENVELOPE_DEPTH + 1):  # the array is one level more
        return None
    try:
        return _request_array_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def decode_requests(data: bytes) -> list[msgspec.Raw | bytes]:
    """Split a JSON array body into raw items, decoded one by one later (where a too deep
    item is refused alone).

    msgspec splits it (its skipping of an item recurses; at its recursion guard the
    array is split again by an iterative scanner, so one absurdly deep item cannot fail
    the whole batch).
    """
    try:
        return _requests_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise InvalidEvent("batch body must be a JSON array of events or NDJSON", field=None) from e
    except msgspec.DecodeError as e:
        raise MalformedJson(str(e)) from e
    except RecursionError:
        pass
    return _split_array(bytes(data))


def _split_array(data: bytes) -> list[msgspec.Raw | bytes]:
    """The items of the JSON array `data`, found iteratively (brackets are only counted)."""
    start = len(data) - len(data.lstrip(_WHITESPACE))
    if data[start : start + 1] != b"[":
        raise InvalidEvent("batch body must be a JSON array of events or NDJSON", field=None)
    items: list[msgspec.Raw | bytes] = []
    depth = 0
    item_start = start + 1
    for m in _TOKEN.finditer(data, start):
        first = data[m.start()]
        if first == 0x22:  # '"'
            if m.end() - m.start() == 1:
                raise MalformedJson("JSON is malformed: unterminated string")
        elif first == 0x2C:  # ','
            if depth == 1:
                items.append(_item(data, item_start, m.start()))
                item_start = m.end()
        elif first in (0x5B, 0x7B):  # '[' '{'
            depth += m.end() - m.start()
        else:  # a run of ']' '}'
            run = m.end() - m.start()
            if run < depth:
                depth -= run
                continue
            close = m.start() + depth - 1  # the bracket that closes the array
            if run > depth or data[close] != 0x5D or data[close + 1 :].strip(_WHITESPACE):
                raise MalformedJson("JSON is malformed: unbalanced brackets or trailing characters")
            last = data[item_start:close].strip(_WHITESPACE)
            if last or items:
                items.append(_item(data, item_start, close))
            return items
    raise MalformedJson("JSON is malformed: input data was truncated")


def _item(data: bytes, start: int, end: int) -> bytes:
    item = data[start:end].strip(_WHITESPACE)
    if not item:
        raise MalformedJson("JSON is malformed: an empty array item")
    return item


class EventFields(msgspec.Struct, frozen=True, kw_only=True):
    """An archived event with its payload kept as the JSON text it was archived as: what
    the analytics loader needs, without decoding the payload into objects and encoding it
    back."""

    id: str
    received_at: datetime
    payload: msgspec.Raw
    source: str | None = None
    type: str | None = None
    timestamp: datetime | None = None


_fields_decoder = msgspec.json.Decoder(EventFields)


def decode_event_fields(data: bytes) -> EventFields:
    """`decode_event` for readers that pass the payload on as JSON text; same checks and
    errors (`payload` must be a JSON object)."""
    data = _bytes(data)
    if nesting_exceeds(data, _ENVELOPE_DEPTH):
        raise _too_deep()
    try:
        fields = _fields_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidEvent(str(e)) from e
    except RecursionError:
        raise _too_deep() from None
    if memoryview(fields.payload)[:1] != b"{":
        raise InvalidEvent("Expected `object`, got another JSON value - at `$.payload`", field="payload")
    return fields


def decode_event(data: bytes) -> Event:
    """Decode an archived or published event; `InvalidEvent` when it is not one (nesting
    deeper than `MAX_DEPTH` included)."""
    data = _bytes(data)
    if nesting_exceeds(data, _ENVELOPE_DEPTH):
        raise _too_deep()
    try:
        return _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidEvent(str(e)) from e
    except RecursionError:
        raise _too_deep() from None
