"""`POST /ingest` and `POST /ingest/batch`: decode at the edge, hand to the ingest service."""

from __future__ import annotations

import anyio.to_thread
from litestar import Request, Response, post
from litestar.di import NamedDependency

from wotr_domain.codec import decode_request, decode_requests
from wotr_domain.errors import InvalidEvent, PayloadTooLarge, WotrError
from wotr_domain.models import BatchItemResult, IngestRequest, Receipt
from wotr_domain.services import IngestService

from .errors import UnsupportedMediaType
from .group_commit import GroupCommit

__all__ = ["ingest_batch", "ingest_one", "parse_batch"]

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def _media_type(request: Request) -> str:
    return request.content_type[0].lower()


def _is_json(media_type: str) -> bool:
    return media_type in JSON_TYPES or media_type.endswith("+json")


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(int(declared), limit)
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(len(body), limit)
    return body


@post("/ingest", status_code=202, summary="Ingest one event")
async def ingest_one(
    request: Request,
    ingest: NamedDependency[IngestService],
    group_commit: NamedDependency[GroupCommit],
    limits: NamedDependency[dict],
) -> Response[Receipt]:
    """Body `{"payload": {...}}` with optional `id`, `source`, `type`, `timestamp`.

    202 with the receipt for a new event; 200 with the first receipt for a repeated id.
    """
    try:
        media_type = _media_type(request)
        if not _is_json(media_type):
            raise UnsupportedMediaType(f"content type must be application/json, got {media_type or 'none'!r}")
        event = decode_request(await _body(request, limits["body"]))
    except WotrError:
        ingest.note_rejected()
        raise
    receipt = await group_commit.submit(event)
    return Response(receipt, status_code=200 if receipt.duplicate else 202)


def parse_batch(body: bytes, media_type: str, max_events: int) -> list[IngestRequest | InvalidEvent]:
    """Split a JSON array or NDJSON body into requests; a bad item becomes its own error."""
    if _is_json(media_type):
        raw_items = decode_requests(body)
    elif media_type in NDJSON_TYPES:
        raw_items = [line for line in body.splitlines() if line.strip()]
    else:
        raise UnsupportedMediaType(
            f"content type must be application/json (array) or application/x-ndjson, got {media_type or 'none'!r}"
        )
    if not raw_items:
        raise InvalidEvent("batch is empty")
    if len(raw_items) > max_events:
        raise PayloadTooLarge(len(raw_items), max_events, unit="events")
    items: list[IngestRequest | InvalidEvent] = []
    for raw in raw_items:
        try:
            items.append(decode_request(raw))
        except InvalidEvent as e:  # MalformedJson included: one bad line spoils only itself
            items.append(e)
    return items


@post("/ingest/batch", status_code=202, summary="Ingest a batch of events (JSON array or NDJSON)")
async def ingest_batch(request: Request, ingest: NamedDependency[IngestService], limits: NamedDependency[dict]) -> Response[dict]:
    """Per-event results in input order: 202 when every event was accepted, 207 when some
    were rejected, 422 when none was."""
    try:
        body = await _body(request, limits["batch_bytes"])
        items = parse_batch(body, _media_type(request), limits["batch_events"])
    except WotrError:
        ingest.note_rejected()
        raise
    results: list[BatchItemResult] = await anyio.to_thread.run_sync(ingest.ingest_batch, items)
    rejected = sum(1 for r in results if r.error is not None)
    status = 202 if rejected == 0 else (422 if rejected == len(results) else 207)
    return Response(
        {"accepted": len(results) - rejected, "rejected": rejected, "results": results},
        status_code=status,
    )

