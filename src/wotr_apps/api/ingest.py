"""`POST /ingest` and `POST /ingest/batch`: read and decode at the edge, hand to the ingest service.

The body is read chunk by chunk and refused (413) as soon as it passes the endpoint's own
limit, so nothing past the limit is buffered. A `gzip` or `deflate` body is inflated
under the same limit on its decoded size (a zip bomb stops at limit + 1 bytes); any other
Content-Encoding is refused (415) before the body is read.
"""

from __future__ import annotations

import zlib
from contextlib import aclosing

import anyio.to_thread
from litestar import Request, Response, post
from litestar.di import NamedDependency

from wotr_domain.codec import decode_request, decode_request_array, decode_requests
from wotr_domain.errors import InvalidEvent, PayloadTooLarge, WotrError
from wotr_domain.models import BatchItemResult, IngestRequest, Receipt
from wotr_domain.services import IngestService

from .auth import INGEST_GUARDS, key_source, stamp_source, stamp_sources
from .edge import ADMITTED, IngestEdge
from .errors import SUPPORTED_CODINGS, BodyTooLarge, CorruptBody, UnsupportedContentEncoding, UnsupportedMediaType
from wotr_domain.services import GroupCommit
from wotr_domain.services.group_commit import InFlightLimit

__all__ = ["inflate", "ingest_batch", "ingest_one", "parse_batch"]

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# zlib window bits per content coding: gzip (RFC 1952), deflate = zlib-wrapped (RFC 1950).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _header_values(request: Request, name: bytes) -> list[str]:
    """The values of header `name` (lower case), read from the ASGI scope: asking the
    framework would build its case-insensitive header mapping for every request."""
    return [value.decode("latin-1") for key, value in request.scope["headers"] if key == name]


def _media_type(request: Request) -> str:
    values = _header_values(request, b"content-type")
    return values[0].partition(";")[0].strip().lower() if values else ""


def _is_json(media_type: str) -> bool:
    return media_type in JSON_TYPES or media_type.endswith("+json")


def _content_coding(request: Request) -> str | None:
    """The body's content coding (`None`: identity); 415 for any other than gzip or deflate."""
    values = _header_values(request, b"content-encoding")
    if not values:
        return None
    codings = [c for v in values for c in (t.strip().lower() for t in v.split(",")) if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _WBITS:
        return codings[0]
    raise UnsupportedContentEncoding(
        f"content encoding {', '.join(codings)!r} is not supported: send {SUPPORTED_CODINGS} or identity"
    )


async def _body(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The raw body and its content coding; 413 as soon as the body passes `limit` bytes
    (declared or read), without reading the rest."""
    coding = _content_coding(request)
    declared = next(iter(_header_values(request, b"content-length")), None)
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, f"content-length {declared}")
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    return b"".join(chunks), coding


def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """Decode a gzip (several members allowed) or deflate (zlib-wrapped, or raw) body.

    413 once the output passes `limit` bytes: zlib never produces more than limit + 1;
    400 for a corrupt or truncated body.
    """
    wbits = _WBITS[coding]
    out: list[bytes] = []
    size = 0
    data = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(data, limit - size + 1)
        except zlib.error as e:
            if wbits == zlib.MAX_WBITS and not out:  # "deflate" sent as a raw deflate stream
                wbits = -zlib.MAX_WBITS
                continue
            raise CorruptBody(f"the {coding} body is corrupt: {e}") from None
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, f"the {coding}-decoded body")
        out.append(chunk)
        if not inflater.eof:
            raise CorruptBody(f"the {coding} body is truncated")
        data = inflater.unused_data
        if not data:
            return b"".join(out)
        if wbits != _WBITS["gzip"]:  # only gzip has members one after the other
            raise CorruptBody(f"the {coding} body has trailing data")


@post("/ingest", status_code=202, summary="Ingest one event", guards=INGEST_GUARDS)
async def ingest_one(request: Request, edge: NamedDependency[IngestEdge]) -> Response[Receipt]:
    """Body `{"payload": {...}}` with optional `id`, `source`, `type`, `timestamp`;
    Content-Encoding gzip or deflate accepted.

    202 with the receipt for a new event; 200 with the first receipt for a repeated id.
    """
    ingest, group_commit, limits = edge.ingest, edge.group_commit, edge.limits
    try:
        media_type = _media_type(request)
        if not _is_json(media_type):
            raise UnsupportedMediaType(f"content type must be application/json, got {media_type or 'none'!r}")
        body, coding = await _body(request, limits["body"])
        event = decode_request(body if coding is None else inflate(body, coding, limits["body"]))
    except WotrError:
        ingest.note_rejected()
        raise
    # Admitted by the server as its headers came in (edge.ADMITTED): served, not refused now.
    receipt = await group_commit.submit(stamp_source(event, key_source(request)),
                                        admitted_at=request.scope.get(ADMITTED))  # type: ignore[call-overload]
    return Response(receipt, status_code=200 if receipt.duplicate else 202)


def _check_batch_type(media_type: str) -> None:
    if not _is_json(media_type) and media_type not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            f"content type must be application/json (array) or application/x-ndjson, got {media_type or 'none'!r}"
        )


def parse_batch(body: bytes, media_type: str, max_events: int) -> list[IngestRequest | InvalidEvent]:
    """Split a JSON array or NDJSON body into requests; a bad item becomes its own error."""
    _check_batch_type(media_type)
    if _is_json(media_type):
        whole = decode_request_array(body)  # every item valid: decoded in one pass
        if whole is not None:
            _check_count(len(whole), max_events)
            return whole  # type: ignore[return-value]
        raw_items = decode_requests(body)
    else:
        raw_items = [line for line in body.splitlines() if line.strip()]
    _check_count(len(raw_items), max_events)
    items: list[IngestRequest | InvalidEvent] = []
    for raw in raw_items:
        try:
            items.append(decode_request(raw))
        except InvalidEvent as e:  # MalformedJson and too deep included: one bad item spoils only itself
            items.append(e)
    return items


def _check_count(count: int, max_events: int) -> None:
    if not count:
        raise InvalidEvent("batch is empty")
    if count > max_events:
        raise PayloadTooLarge(count, max_events, unit="events")


@post("/ingest/batch", status_code=202, summary="Ingest a batch of events (JSON array or NDJSON)", guards=INGEST_GUARDS)
async def ingest_batch(request: Request, edge: NamedDependency[IngestEdge]) -> Response[dict]:
    """Per-event results in input order: 202 when every event was accepted, 207 when some
    were rejected, 422 when none was. Content-Encoding gzip or deflate accepted. 503 at
    once (before the body is read) when the batches in flight are at their bound."""
    with edge.batch_slots.admit():
        return await _ingest_batch(request, edge.ingest, edge.limits)


async def _ingest_batch(request: Request, ingest: IngestService, limits: dict) -> Response[dict]:
    source = key_source(request)
    try:
        media_type = _media_type(request)
        _check_batch_type(media_type)
        body, coding = await _body(request, limits["batch_bytes"])
    except WotrError:
        ingest.note_rejected()
        raise

    def parse_and_ingest() -> list[BatchItemResult]:
        # In a worker thread: inflating and splitting up to 16 MiB stays off the event loop.
        try:
            plain = body if coding is None else inflate(body, coding, limits["batch_bytes"])
            items = parse_batch(plain, media_type, limits["batch_events"])
        except WotrError:
            ingest.note_rejected()
            raise
        return ingest.ingest_batch(stamp_sources(items, source))

    results = await anyio.to_thread.run_sync(parse_and_ingest)
    rejected = sum(1 for r in results if r.error is not None)
    status = 202 if rejected == 0 else (422 if rejected == len(results) else 207)
    return Response(
        {"accepted": len(results) - rejected, "rejected": rejected, "results": results},
        status_code=status,
    )
