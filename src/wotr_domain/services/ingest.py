"""Ingest: archive the raw event, record its metadata, publish it, mark it published.

Steps 1-2 (object, metadata) are the durability point: once both succeed the event is
accepted. Publishing is best-effort in the request path; an event whose publish failed
stays `stored` and the outbox relay publishes it later, so nothing accepted is lost.
A failure before the durability point removes what was written, so a refused event
never surfaces later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from ..codec import encode, sha256_hex
from ..errors import InvalidEvent, NotFound, PayloadTooLarge, Unavailable, WotrError
from ..ids import new_event_id, validate_event_id
from ..models import (
    BatchItemResult,
    BusMessage,
    Event,
    EventMetadata,
    EventStatus,
    IngestRequest,
    Receipt,
)
from ..ports import EventBus, MetadataRepo, ObjectStore
from .observer import IngestObserver, NullObserver

__all__ = ["IngestService", "object_key_for", "bus_message_for"]

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


def object_key_for(event_id: str, received_at: datetime) -> str:
    """Raw archive layout: `raw/dt=YYYY-MM-DD/<id>.json`, dated by reception (UTC)."""
    return f"raw/dt={received_at.astimezone(UTC):%Y-%m-%d}/{event_id}.json"


def batch_key_for(received_at: datetime) -> str:
    """A batch's NDJSON object: `raw/dt=YYYY-MM-DD/batch-<uuid7>.ndjson`, one event per line."""
    return f"raw/dt={received_at.astimezone(UTC):%Y-%m-%d}/batch-{new_event_id()}.ndjson"


def bus_message_for(event_id: str, body: bytes, object_key: str, line: int | None = None) -> BusMessage:
    """The bus carries the archived bytes, keyed by id; headers name the id and the object."""
    headers = {"content-type": "application/json", "event-id": event_id, "object-key": object_key}
    if line is not None:
        headers["object-line"] = str(line)
    return BusMessage(key=event_id, value=body, headers=headers)


def line_of(obj: bytes, line: int | None) -> bytes:
    """The event's bytes in a raw object: the whole object, or one line of a batch object."""
    if line is None:
        return obj
    lines = obj.split(b"\n")
    if not 0 <= line < len(lines) or not lines[line]:
        raise NotFound(f"line {line} is not in the object")
    return lines[line]


class IngestService:
    """Accepts events; the only writer of raw objects and metadata rows."""

    def __init__(
        self,
        store: ObjectStore,
        repo: MetadataRepo,
        bus: EventBus,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Callable[[], datetime] = utcnow,
        observer: IngestObserver | None = None,
        publish_pause: float = 5.0,
    ) -> None:
        self._publish_pause = publish_pause
        self._publish_paused_until: datetime | None = None
        self._store = store
        self._repo = repo
        self._bus = bus
        self._max_event_bytes = max_event_bytes
        self._clock = clock
        self._observer = observer or NullObserver()

    def note_rejected(self, events: int = 1) -> None:
        """Count input refused before it reached the service (undecodable, too large, wrong type)."""
        self._observer.rejected(events)

    def ingest(self, request: IngestRequest) -> Receipt:
        """Accept one event; raises `InvalidEvent`, `PayloadTooLarge` or `Unavailable`."""
        try:
            prepared = self._prepare(request, self._clock())
        except WotrError:
            self._observer.rejected(1)
            raise
        return self._accept([prepared])[0]

    def ingest_many(self, items: Sequence[IngestRequest | WotrError]) -> list[Receipt | WotrError]:
        """Accept every valid item in one pass (one object, one metadata write, one publish).

        Each item is answered by its receipt or by the error that refused it; an item that
        is already an error stays one. `Unavailable` aborts the whole call: nothing of it
        is accepted.
        """
        answers: dict[int, Receipt | WotrError] = {}
        prepared: list[tuple[int, _Prepared]] = []
        received_at = self._clock()  # one reception time: the batch is one object, on one date
        for index, item in enumerate(items):
            try:
                if isinstance(item, WotrError):
                    raise item
                prepared.append((index, self._prepare(item, received_at)))
            except (InvalidEvent, PayloadTooLarge) as e:
                answers[index] = e
        if answers:
            self._observer.rejected(len(answers))
        receipts = self._accept([p for _, p in prepared]) if prepared else []
        for (index, _), receipt in zip(prepared, receipts, strict=True):
            answers[index] = receipt
        return [answers[i] for i in range(len(items))]

    def ingest_batch(self, items: Sequence[IngestRequest | InvalidEvent]) -> list[BatchItemResult]:
        """`ingest_many`, answered as per-item results in input order."""
        return [_result(index, answer) for index, answer in enumerate(self.ingest_many(items))]

    # -- steps -------------------------------------------------------------------------

    def _prepare(self, request: IngestRequest, received_at: datetime) -> _Prepared:
        event_id = new_event_id() if request.id is None else validate_event_id(request.id)
        event = Event(
            id=event_id,
            received_at=received_at,
            payload=request.payload,
            source=request.source,
            type=request.type,
            timestamp=request.timestamp,
        )
        body = encode(event)
        if len(body) > self._max_event_bytes:
            raise PayloadTooLarge(len(body), self._max_event_bytes)
        return _Prepared(event, body, client_id=request.id is not None)

    def _accept(self, batch: list[_Prepared]) -> list[Receipt]:
        receipts: dict[str, Receipt] = {}
        # Only a client's id can already exist: a fresh UUIDv7 needs no lookup (one round trip less).
        client_ids = [p.event.id for p in batch if p.client_id]
        existing = self._repo.find(client_ids) if client_ids else {}
        fresh: list[_Prepared] = []
        seen: set[str] = set()
        for p in batch:
            if p.event.id in existing:
                receipts[p.event.id] = _duplicate(existing[p.event.id])
            elif p.event.id not in seen:
                seen.add(p.event.id)
                fresh.append(p)
        if fresh:
            receipts.update(self._store_and_record(fresh))
            self._publish([p for p in fresh if not receipts[p.event.id].duplicate])
            for p in fresh:
                r = receipts[p.event.id]
                if not r.duplicate and p.published:
                    receipts[p.event.id] = msgspec.structs.replace(r, status=EventStatus.PUBLISHED)
        out: list[Receipt] = []
        answered: set[str] = set()
        for p in batch:
            r = receipts[p.event.id]
            if not r.duplicate and p.event.id in answered:  # the same id twice in one batch
                r = msgspec.structs.replace(r, duplicate=True)
            answered.add(p.event.id)
            out.append(r)
        self._observer.accepted(
            sum(1 for r in out if not r.duplicate),
            sum(len(p.body) for p in fresh),
        )
        self._observer.duplicates(sum(1 for r in out if r.duplicate))
        return out

    def _archive(self, fresh: list[_Prepared]) -> str:
        """Write the raw bytes: one object for one event, one NDJSON object for several."""
        if len(fresh) == 1:
            p = fresh[0]
            p.key = object_key_for(p.event.id, p.event.received_at)
            return self._store.put(p.key, p.body, "application/json").key
        key = batch_key_for(fresh[0].event.received_at)
        for line, p in enumerate(fresh):
            p.key, p.line = key, line
        self._store.put(key, b"\n".join(p.body for p in fresh) + b"\n", "application/x-ndjson")
        return key

    def _store_and_record(self, fresh: list[_Prepared]) -> dict[str, Receipt]:
        written: list[str] = []
        try:
            written.append(self._archive(fresh))
            metas = [
                EventMetadata(
                    id=p.event.id,
                    object_key=p.key,
                    line=p.line,
                    size=len(p.body),
                    checksum=sha256_hex(p.body),
                    received_at=p.event.received_at,
                    source=p.event.source,
                    type=p.event.type,
                )
                for p in fresh
            ]
            recorded = self._repo.record(metas)
        except Unavailable:
            self._observer.failed(len(fresh))
            self._discard(written)
            raise
        receipts: dict[str, Receipt] = {}
        for p, rec in zip(fresh, recorded, strict=True):
            if rec.created:
                receipts[p.event.id] = Receipt(id=p.event.id, object_key=p.key, status=EventStatus.STORED, line=p.line)
            else:
                # Lost a race with a concurrent request for the same id: the first one wins.
                # (A batch object keeps its line: the other lines are accepted events.)
                if p.line is None and rec.metadata.object_key != p.key:
                    self._discard([p.key])
                receipts[p.event.id] = _duplicate(rec.metadata)
        return receipts

    def _publish(self, accepted: list[_Prepared]) -> None:
        """Publish now, or leave it to the relay while the bus is known to be down.

        After a failed publish, requests skip the bus for `publish_pause` seconds, so an
        outage costs one timeout, not one per request.
        """
        if not accepted:
            return
        if self._publish_paused_until is not None and self._clock() < self._publish_paused_until:
            self._observer.publish_deferred(len(accepted))
            return
        try:
            self._bus.publish([bus_message_for(p.event.id, p.body, p.key, p.line) for p in accepted])
        except Unavailable as e:
            log.warning("publish deferred to the outbox relay for %d event(s): %s", len(accepted), e)
            self._publish_paused_until = self._clock() + timedelta(seconds=self._publish_pause)
            self._observer.publish_deferred(len(accepted))
            return
        self._publish_paused_until = None
        self._observer.published(len(accepted))
        for p in accepted:
            p.published = True
        try:
            self._repo.mark_published([p.event.id for p in accepted], self._clock())
        except Unavailable as e:
            # Published but still `stored`: the relay publishes again and the sink dedupes.
            log.warning("could not mark %d event(s) published: %s", len(accepted), e)

    def _discard(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._store.delete(key)
            except WotrError as e:  # the store itself may be what failed
                log.error("could not remove object %s of a refused event: %s", key, e)


class _Prepared:
    __slots__ = ("event", "body", "client_id", "key", "line", "published")

    def __init__(self, event: Event, body: bytes, *, client_id: bool) -> None:
        self.event = event
        self.body = body
        self.client_id = client_id
        self.key = ""  # set when archived: its own object, or the batch's
        self.line: int | None = None
        self.published = False


def _result(index: int, answer: Receipt | WotrError) -> BatchItemResult:
    if isinstance(answer, Receipt):
        return BatchItemResult(
            index=index, id=answer.id, object_key=answer.object_key, line=answer.line,
            status=answer.status.value, duplicate=answer.duplicate,
        )
    if isinstance(answer, InvalidEvent):
        return BatchItemResult(index=index, error=answer.message, field=answer.field)
    return BatchItemResult(index=index, error=str(answer))


def _duplicate(meta: EventMetadata) -> Receipt:
    return Receipt(id=meta.id, object_key=meta.object_key, status=meta.status, duplicate=True, line=meta.line)
