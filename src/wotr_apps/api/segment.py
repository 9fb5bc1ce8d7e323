"""The Segment-compatible tracking API: `POST /v1/track|identify|page|screen|group|alias|batch`.

Segment's SDKs (and anything that speaks its HTTP tracking API) can point their host at
wotr. Each message becomes one wotr event (docs/api.md states the mapping):

- `messageId` is the event id: a retry of a message is the same event. A messageId that
  is not a valid wotr id becomes `seg-` + the hex SHA-256 of its UTF-8 bytes.
  Like Segment, the first message of an id is kept: a later one with the same id is
  acknowledged as a duplicate (an SDK's retry differs in `sentAt`, and so in the corrected
  timestamp; wotr cannot tell it from other content, and a 409 would make the SDK drop and
  report a batch that was stored).
- The event type is the message type, and `track:<event name>` for a track call.
- `timestamp` is corrected for the device's clock skew as Segment does:
  `timestamp + (receivedAt - sentAt)`; without `sentAt` it stands, without `timestamp`
  the event time is `receivedAt` (when the API read the request).
- The payload is the message as sent, its `type` filled in from the endpoint, the batch's
  `context`, `integrations` and `sentAt` copied into each message that has none of its
  own, and `writeKey` removed (a credential is not data). The event source is `segment`.

Answers are what the SDKs expect: 200 `{"success": true, ...}` for an accepted message
(new or repeated); 400 for one that is invalid (the SDKs drop it rather than retry). A
batch with some invalid messages is 200 with the invalid ones listed (Segment answers 200
too, and the Python SDK would otherwise report, and drop, the whole batch though its
valid messages were stored); a batch with none valid is 400. Bodies are read as
`POST /ingest` reads them (limits, `Content-Encoding` gzip or deflate) as JSON, also when
sent as `text/plain`, as analytics.js does to spare browsers a CORS preflight.

A request whose `Origin` header names an origin the CORS settings do not allow is
refused (403) before its body is read: CORS preflight protects `application/json`, but a
`text/plain` POST is a "simple" request a browser sends without asking.

`TRACKING_ROUTES` lists the handlers, so that a guard applies to them in one line.
The mapping (`tracking_request`, `tracking_batch`) uses only the standard library,
msgspec and the domain: it could move into `wotr_domain`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import msgspec
from litestar import Request, Response, post
from litestar.config.cors import CORSConfig
from litestar.di import NamedDependency

from wotr_domain.codec import MAX_DEPTH, nesting_exceeds
from wotr_domain.errors import Conflict, InvalidEvent, InvalidId, MalformedJson, PayloadTooLarge, Refused, WotrError
from wotr_domain.ids import validate_event_id
from wotr_domain.models import IngestRequest, Receipt
from wotr_domain.services import GroupCommit, IngestService
from wotr_domain.services.ingest import MAX_TEXT_FIELD_CHARS

from .edge import IngestEdge
from .auth import key_source, stamp_source, stamp_sources
from .errors import UnsupportedMediaType, error_response
from .ingest import _body, _is_json, _media_type, inflate

__all__ = [
    "KINDS",
    "SOURCE",
    "TRACKING_ROUTES",
    "MessageResult",
    "OriginPolicy",
    "TrackingAnswer",
    "TrackingBatchAnswer",
    "corrected_timestamp",
    "event_id_for",
    "tracking_batch",
    "tracking_request",
]

KINDS = ("track", "identify", "page", "screen", "group", "alias")
SOURCE = "segment"
DERIVED_ID_PREFIX = "seg-"
# Keys of a batch envelope that apply to every message lacking its own (Segment's rule for
# context and integrations; sentAt is the batch's send time).
BATCH_DEFAULTS = ("context", "integrations", "sentAt")
_TRACK_PREFIX = "track:"
_OBJECT_FIELDS = ("context", "integrations", "properties", "traits")


# -- the mapping (pure) -------------------------------------------------------------------


def event_id_for(message_id: object) -> str | None:
    """The wotr event id of a messageId: itself when it is a valid wotr id, else
    `seg-<hex SHA-256 of its UTF-8 bytes>`; None (wotr generates one) when absent."""
    if message_id is None:
        return None
    if not isinstance(message_id, str) or not message_id:
        raise InvalidEvent("messageId must be a non-empty string", field="messageId")
    try:
        return validate_event_id(message_id)
    except InvalidId:
        return DERIVED_ID_PREFIX + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()


def _instant(value: object, field: str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
    raise InvalidEvent(f"{field} must be an ISO-8601 date-time string", field=field)


def corrected_timestamp(timestamp: object, sent_at: object, received_at: datetime) -> datetime:
    """The event time: `timestamp + (receivedAt - sentAt)` (the device's clock skew taken
    out, as Segment does); `timestamp` alone without `sentAt`; `receivedAt` without
    `timestamp`."""
    sent = None if sent_at is None else _instant(sent_at, "sentAt")
    if timestamp is None:
        return received_at
    event_time = _instant(timestamp, "timestamp")
    if sent is None:
        return event_time
    try:
        return event_time + (received_at - sent)
    except OverflowError:
        raise InvalidEvent("timestamp corrected by receivedAt - sentAt is out of range", field="timestamp") from None


def _identity(value: object) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _check_shape(message: Mapping[str, Any], kind: str) -> None:
    """Segment's required fields per call (the spec's common fields and each call's own)."""
    if kind == "alias":
        if not _identity(message.get("previousId")):
            raise InvalidEvent("alias needs previousId (a string)", field="previousId")
        if not _identity(message.get("userId")):
            raise InvalidEvent("alias needs userId (a string)", field="userId")
    elif not (_identity(message.get("userId")) or _identity(message.get("anonymousId"))):
        field = "userId" if "userId" in message else "anonymousId"
        raise InvalidEvent(f"{kind} needs userId or anonymousId (a string)", field=field)
    if kind == "group" and not _identity(message.get("groupId")):
        raise InvalidEvent("group needs groupId (a string)", field="groupId")
    for name in _OBJECT_FIELDS:
        if name in message and message[name] is not None and not isinstance(message[name], dict):
            raise InvalidEvent(f"{name} must be an object", field=name)
    if kind in ("page", "screen"):
        for name in ("name", "category"):
            if message.get(name) is not None and not isinstance(message[name], str):
                raise InvalidEvent(f"{name} must be a string", field=name)


def _event_type(message: Mapping[str, Any], kind: str) -> str:
    if kind != "track":
        return kind
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidEvent("track needs event (the event's name, a non-empty string)", field="event")
    limit = MAX_TEXT_FIELD_CHARS - len(_TRACK_PREFIX)
    if len(event) > limit:
        raise InvalidEvent(f"event is longer than {limit} characters", field="event")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in event):
        raise InvalidEvent("event must not contain control characters (U+0000-U+001F, U+007F)", field="event")
    return _TRACK_PREFIX + event


def tracking_request(
    message: object,
    *,
    received_at: datetime,
    kind: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> IngestRequest:
    """One Segment message as a wotr ingest request (the module docstring states the rules).

    `kind` is the endpoint's call type (None for a batch: the message's `type` says);
    `defaults` the batch envelope's `context`, `integrations` and `sentAt`. Raises
    `InvalidEvent` naming the offending field.
    """
    if not isinstance(message, dict):
        raise InvalidEvent("a message must be a JSON object", field=None)
    payload = dict(message)
    for key, value in (defaults or {}).items():
        if key in BATCH_DEFAULTS and value is not None and payload.get(key) is None:
            payload[key] = value
    payload.pop("writeKey", None)
    declared = payload.get("type")
    if kind is None:
        if not isinstance(declared, str) or declared not in KINDS:
            raise InvalidEvent(f"type must be one of {', '.join(KINDS)}", field="type")
        kind = declared
    elif declared is not None and declared != kind:
        raise InvalidEvent(f"type {declared!r} does not match the endpoint's call {kind!r}", field="type")
    payload["type"] = kind
    _check_shape(payload, kind)
    return IngestRequest(
        payload=payload,
        id=event_id_for(payload.get("messageId")),
        source=SOURCE,
        type=_event_type(payload, kind),
        timestamp=corrected_timestamp(payload.get("timestamp"), payload.get("sentAt"), received_at),
    )


_envelope_decoder = msgspec.json.Decoder(dict[str, Any])
_message_decoder = msgspec.json.Decoder()


def _decode(data: bytes, decoder: msgspec.json.Decoder, levels: int) -> Any:
    if nesting_exceeds(data, levels):
        raise InvalidEvent(
            f"a message nests deeper than the limit of {MAX_DEPTH} levels (the message object is level 1)",
            field=None,
        )
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as e:
        raise InvalidEvent(f"the body must be a JSON object: {e}", field=None) from None
    except msgspec.DecodeError as e:
        raise MalformedJson(str(e)) from None


def tracking_batch(body: bytes, *, received_at: datetime, max_events: int) -> list[IngestRequest | InvalidEvent]:
    """A `{"batch": [...]}` body as requests; an invalid message becomes its own error."""
    envelope = _decode(body, _envelope_decoder, MAX_DEPTH + 2)  # envelope, batch array, message
    messages = envelope.get("batch")
    if not isinstance(messages, list):
        raise InvalidEvent('the body must be {"batch": [messages...]}', field="batch")
    if not messages:
        raise InvalidEvent("batch is empty", field="batch")
    if len(messages) > max_events:
        raise PayloadTooLarge(len(messages), max_events, unit="events")
    defaults = {key: envelope[key] for key in BATCH_DEFAULTS if envelope.get(key) is not None}
    items: list[IngestRequest | InvalidEvent] = []
    for message in messages:
        try:
            items.append(tracking_request(message, received_at=received_at, defaults=defaults))
        except InvalidEvent as e:
            items.append(e)
    return items


# -- answers ------------------------------------------------------------------------------


class TrackingAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A message was accepted (or was already: `duplicate`)."""

    success: bool = True
    id: str
    duplicate: bool = False


class MessageResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message of a batch: its event id, or the error that rejected it alone."""

    index: int
    id: str | None = None
    duplicate: bool = False
    error: str | None = None
    code: str | None = None
    field: str | None = None


class TrackingBatchAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """At least one message was accepted; `results` has one entry per message, in order."""

    success: bool = True
    accepted: int
    rejected: int
    results: list[MessageResult]


def _detail(error: WotrError) -> str:
    return error.message if isinstance(error, InvalidEvent) else str(error)


def _result(index: int, answer: Receipt | WotrError, item: IngestRequest | InvalidEvent) -> MessageResult:
    if isinstance(answer, Receipt):
        return MessageResult(index=index, id=answer.id, duplicate=answer.duplicate)
    if isinstance(answer, Conflict) and isinstance(item, IngestRequest):  # the first message of an id is kept
        return MessageResult(index=index, id=item.id, duplicate=True)
    field = answer.field if isinstance(answer, InvalidEvent) else None
    return MessageResult(index=index, error=_detail(answer), code=answer.code, field=field)


def _invalid(error: WotrError) -> Response:
    """400 for a message that cannot be taken: Segment's SDKs drop it rather than retry."""
    field = error.field if isinstance(error, InvalidEvent) else None
    return error_response(400, error.code, _detail(error), field)


# -- the edge -----------------------------------------------------------------------------


class OriginPolicy:
    """The browser origins the CORS settings allow (none when CORS is off)."""

    def __init__(self, cors: CORSConfig | None) -> None:
        self._cors = cors

    def allows(self, request: Request) -> bool:
        """No `Origin` (not a browser), the API's own origin, or one the CORS settings allow."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        host = request.headers.get("host")
        if host and origin.lower() == f"{request.url.scheme}://{host}".lower():
            return True
        return self._cors is not None and self._cors.is_origin_allowed(origin)


def _origin_refused(request: Request) -> Response:
    return error_response(
        403, "origin_not_allowed", f"origin {request.headers.get('origin')!r} is not allowed (WOTR_CORS_ORIGINS)"
    )


def _check_type(request: Request) -> None:
    """JSON, also as `text/plain` (analytics.js); 415 otherwise, before the body is read."""
    media_type = _media_type(request)
    if not (_is_json(media_type) or media_type == "text/plain"):
        raise UnsupportedMediaType(f"content type must be application/json or text/plain, got {media_type or 'none'!r}")


async def _single(
    request: Request, kind: str, ingest: IngestService, group_commit: GroupCommit, limits: dict, origins: OriginPolicy
) -> Response:
    if not origins.allows(request):
        ingest.note_rejected()
        return _origin_refused(request)
    received_at = datetime.now(UTC)
    try:
        _check_type(request)
        body, coding = await _body(request, limits["body"])
        plain = body if coding is None else inflate(body, coding, limits["body"])
        event = tracking_request(_decode(plain, _message_decoder, MAX_DEPTH), received_at=received_at, kind=kind)
    except InvalidEvent as e:
        ingest.note_rejected()
        return _invalid(e)
    except WotrError:
        ingest.note_rejected()
        raise
    try:
        receipt = await group_commit.submit(stamp_source(event, key_source(request)))  # a key's source wins
    except Conflict:  # the first message of an id is kept (see the module docstring)
        return Response(TrackingAnswer(id=event.id or "", duplicate=True), status_code=200)
    except (InvalidEvent, Refused) as e:  # the message itself cannot be taken: the SDKs drop it
        return _invalid(e)
    return Response(TrackingAnswer(id=receipt.id, duplicate=receipt.duplicate), status_code=200)


def _single_route(kind: str) -> Any:
    async def handler(request: Request, edge: NamedDependency[IngestEdge]) -> Response[TrackingAnswer]:
        return await _single(request, kind, edge.ingest, edge.group_commit, edge.limits, edge.origins)

    handler.__name__ = handler.__qualname__ = f"segment_{kind}"
    handler.__doc__ = (
        f"One Segment `{kind}` call (the Segment spec's message; `type` may be omitted). "
        f"`/v1/{kind[0]}` is the same endpoint under the short path analytics.js uses."
    )
    return post(
        [f"/v1/{kind}", f"/v1/{kind[0]}"],
        status_code=200,
        summary=f"Segment {kind} call",
        tags=["tracking (Segment-compatible)"],
        name=f"segment_{kind}",
    )(handler)


@post(
    ["/v1/batch", "/v1/b"],
    status_code=200,
    summary="Segment batch: several calls in one request",
    tags=["tracking (Segment-compatible)"],
    name="segment_batch",
)
async def segment_batch(request: Request, edge: NamedDependency[IngestEdge]) -> Response[TrackingBatchAnswer]:
    """`{"batch": [messages], "sentAt"?, "context"?, "integrations"?}`, the envelope every
    Segment server SDK sends (`/v1/b` is analytics.js's short path). 200 when at least one
    message was accepted (the others listed with their error), 400 when none was."""
    ingest, limits, origins = edge.ingest, edge.limits, edge.origins
    if not origins.allows(request):
        ingest.note_rejected()
        return _origin_refused(request)
    received_at = datetime.now(UTC)
    try:
        _check_type(request)
        body, coding = await _body(request, limits["batch_bytes"])
    except WotrError:
        ingest.note_rejected()
        raise

    def parse_and_ingest() -> tuple[list[IngestRequest | InvalidEvent], list[Receipt | WotrError]]:
        # In a worker thread: inflating and decoding up to the batch limit stays off the event loop.
        try:
            plain = body if coding is None else inflate(body, coding, limits["batch_bytes"])
            items = tracking_batch(plain, received_at=received_at, max_events=limits["batch_events"])
        except WotrError:
            ingest.note_rejected()
            raise
        items = stamp_sources(items, key_source(request))  # a key's source wins, as on /ingest
        return items, ingest.ingest_many(items)

    try:
        items, answers = await anyio.to_thread.run_sync(parse_and_ingest)
    except InvalidEvent as e:
        return _invalid(e)
    results = [_result(i, answer, item) for i, (answer, item) in enumerate(zip(answers, items, strict=True))]
    rejected = [r for r in results if r.error is not None]
    if len(rejected) == len(results):
        first = rejected[0]
        shown = "; ".join(f"batch[{r.index}]: {r.error}" for r in rejected[:5])
        more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
        return error_response(
            400, first.code or "invalid_event", f"no message of the batch is valid: {shown}{more}",
            f"batch[{first.index}].{first.field}" if first.field else None,
        )
    return Response(
        TrackingBatchAnswer(accepted=len(results) - len(rejected), rejected=len(rejected), results=results),
        status_code=200,
    )


segment_track = _single_route("track")
segment_identify = _single_route("identify")
segment_page = _single_route("page")
segment_screen = _single_route("screen")
segment_group = _single_route("group")
segment_alias = _single_route("alias")

# Every tracking handler: `Router("/", route_handlers=TRACKING_ROUTES, guards=[...])`, or
# the guard on each of them, is the one line that puts them behind authentication.
TRACKING_ROUTES: list[Any] = [
    segment_track, segment_identify, segment_page, segment_screen, segment_group, segment_alias, segment_batch,
]
