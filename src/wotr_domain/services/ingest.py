"""Ingest: archive the raw event, record its metadata, publish it, mark it published.

Steps 1-2 (object, metadata) are the durability point: once both succeed the event is
accepted. Publishing is best-effort, in the call (`ingest`, `ingest_many`) or as a step
after the answer (`accept_many`, what the group commit uses); an event whose publish
failed stays `stored` and the outbox relay publishes it later, so nothing accepted is lost.

Concurrent attempts for one client id never share an object key (`wotr_domain.archive`):
the attempt whose metadata row is recorded first is the event, the others remove their
own objects and are answered as duplicates (same content) or conflicts (other content).
An item that a store permanently refuses is answered alone; the other items of its
batch or flush are accepted without it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from ..archive import bus_message_for, fingerprint, raw_object
from ..codec import encode, sha256_hex
from ..errors import Conflict, InvalidEvent, PayloadTooLarge, Refused, Unavailable, WotrError
from ..ids import new_event_id, new_event_ids, validate_event_id
from ..models import (
    BatchItemResult,
    Event,
    EventMetadata,
    EventStatus,
    IngestRequest,
    Receipt,
)
from ..ports import EventBus, MetadataRepo, ObjectStore
from .breaker import Breaker
from .observer import IngestObserver, NullObserver

__all__ = ["IngestService", "PublishStep", "validate_text_field", "validate_timestamp"]

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
MAX_TEXT_FIELD_CHARS = 256
# Event times every store can hold (the analytics engine's DateTime64 range).
EARLIEST_TIMESTAMP = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# `source` and `type` values already found valid (the same few recur in every batch);
# cleared when it reaches the bound, so varied values cost only the check itself.
_KNOWN_TEXT_MAX = 4096


def utcnow() -> datetime:
    return datetime.now(UTC)


def validate_text_field(name: str, value: str | None) -> None:
    """`source` and `type` are short single-line text: every store can hold them."""
    if value is None:
        return
    if len(value) > MAX_TEXT_FIELD_CHARS:
        raise InvalidEvent(f"{name} is longer than {MAX_TEXT_FIELD_CHARS} characters", field=name)
    if _CONTROL.search(value) is not None:
        raise InvalidEvent(f"{name} must not contain control characters (U+0000-U+001F, U+007F)", field=name)


def validate_timestamp(value: datetime | None) -> None:
    """The event time must be one every store can represent (1900-01-01 to 2299-12-31 UTC)."""
    if value is None:
        return
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST_TIMESTAMP <= aware <= LATEST_TIMESTAMP:
        raise InvalidEvent("timestamp must be between 1900-01-01 and 2299-12-31 (UTC)", field="timestamp")


class _Prepared(msgspec.Struct, frozen=True, gc=False):
    """A validated event, its archived bytes and the fingerprint of its content (None for
    an id wotr generated: nothing else can carry it)."""

    event: Event
    body: bytes
    fingerprint: str | None
    client_id: bool


Answer = Receipt | WotrError


class PublishStep:
    """The publish that follows `IngestService.accept_many`: calling it publishes the new
    events and marks them published. Steps add up (`a + b`): one publish and one mark for
    the events of both, which is how a caller that runs them late catches up."""

    __slots__ = ("_pending", "_service")

    def __init__(self, service: IngestService, pending: list[tuple[_Prepared, Receipt]]) -> None:
        self._service = service
        self._pending = pending

    def __call__(self) -> None:
        self._service._publish(self._pending)

    def __add__(self, other: PublishStep) -> PublishStep:
        if not isinstance(other, PublishStep) or other._service is not self._service:
            return NotImplemented
        return PublishStep(self._service, self._pending + other._pending)

    def __len__(self) -> int:
        return len(self._pending)


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
        self._publish_breaker = Breaker(publish_pause, clock)
        self._store = store
        self._repo = repo
        self._bus = bus
        self._max_event_bytes = max_event_bytes
        self._clock = clock
        self._observer = observer or NullObserver()
        self._known_text: set[str] = set()

    def note_rejected(self, events: int = 1) -> None:
        """Count input refused before it reached the service (undecodable, too large, wrong type)."""
        self._observer.rejected(events)

    def ingest(self, request: IngestRequest) -> Receipt:
        """Accept one event; raises `InvalidEvent`, `PayloadTooLarge`, `Conflict`, `Refused` or `Unavailable`."""
        try:
            prepared = self._prepare(request, self._clock(), new_event_id)
        except WotrError:
            self._observer.rejected(1)
            raise
        (answer,), _ = self._accept([prepared], publish=True)
        if isinstance(answer, WotrError):
            raise answer
        return answer

    def ingest_many(self, items: Sequence[IngestRequest | WotrError]) -> list[Answer]:
        """Accept every valid item in one pass (one object, one metadata write, one publish).

        Each item is answered by its receipt or by the error that refused it alone
        (`InvalidEvent`, `PayloadTooLarge`, `Conflict`, `Refused`); an item that is
        already an error stays one. `Unavailable` aborts the whole call: nothing of it
        is accepted.
        """
        answers, _ = self._many(items, publish=True)
        return answers

    def accept_many(self, items: Sequence[IngestRequest | WotrError]) -> tuple[list[Answer], PublishStep]:
        """`ingest_many` up to the durability point, and its publish as a separate step.

        The answers come as soon as the objects and the metadata are durable (new events'
        receipts say `stored`); the returned step publishes the new events and marks them
        published. A caller that answers its clients first (the group commit) keeps the
        bus's delivery wait and the mark out of their latency; if the step fails, or never
        runs (the process dies), the events stay `stored` and the outbox relay publishes
        them, as after any failed publish.
        """
        answers, pending = self._many(items, publish=False)
        return answers, PublishStep(self, pending)

    def _many(
        self, items: Sequence[IngestRequest | WotrError], *, publish: bool
    ) -> tuple[list[Answer], list[tuple[_Prepared, Receipt]]]:
        answers: list[Answer | None] = [None] * len(items)
        indexes: list[int] = []
        prepared: list[_Prepared] = []
        received_at = self._clock()  # one reception time: the batch is one object, on one date
        # The ids to generate, all at once (one read of the clock and of the random source).
        next_id = iter(new_event_ids(sum(1 for i in items if not isinstance(i, WotrError) and i.id is None))).__next__
        prepare = self._prepare
        for index, item in enumerate(items):
            try:
                if isinstance(item, WotrError):
                    raise item
                prepared.append(prepare(item, received_at, next_id))
                indexes.append(index)
            except (InvalidEvent, PayloadTooLarge) as e:
                answers[index] = e
        if len(prepared) < len(items):
            self._observer.rejected(len(items) - len(prepared))
        accepted, pending = self._accept(prepared, publish=publish) if prepared else ([], [])
        for index, answer in zip(indexes, accepted, strict=True):
            answers[index] = answer
        return answers, pending  # type: ignore[return-value]  # every index answered

    def ingest_batch(self, items: Sequence[IngestRequest | InvalidEvent]) -> list[BatchItemResult]:
        """`ingest_many`, answered as per-item results in input order."""
        return [_result(index, answer) for index, answer in enumerate(self.ingest_many(items))]

    # -- steps -------------------------------------------------------------------------

    def _prepare(self, request: IngestRequest, received_at: datetime, new_id: Callable[[], str]) -> _Prepared:
        """Validate and encode one request; `new_id` gives the id when the client sent none."""
        client_id = request.id is not None
        event_id = validate_event_id(request.id) if client_id else new_id()  # type: ignore[arg-type]
        source, type_, timestamp = request.source, request.type, request.timestamp
        known = self._known_text
        if source is not None and source not in known:
            validate_text_field("source", source)
            self._knows(source)
        if type_ is not None and type_ not in known:
            validate_text_field("type", type_)
            self._knows(type_)
        if timestamp is not None:
            validate_timestamp(timestamp)
        event = Event(
            id=event_id, received_at=received_at, payload=request.payload, source=source, type=type_, timestamp=timestamp
        )
        body = encode(event)
        if len(body) > self._max_event_bytes:
            raise PayloadTooLarge(len(body), self._max_event_bytes)
        # Only a client's id can be sent again: a generated one needs no fingerprint.
        content = fingerprint(event_id, request.payload, source, type_, timestamp) if client_id else None
        return _Prepared(event, body, content, client_id)

    def _knows(self, text: str) -> None:
        """Remember a valid `source` or `type` value (the same rules hold for both)."""
        if len(self._known_text) >= _KNOWN_TEXT_MAX:
            self._known_text.clear()
        self._known_text.add(text)

    def _accept(self, batch: list[_Prepared], *, publish: bool) -> tuple[list[Answer], list[tuple[_Prepared, Receipt]]]:
        """Answers in input order: the first item of each id decides, repeats follow it.

        With `publish` the new events are published (and their receipts say so) before
        answering; else they are returned, still to be published."""
        # Only a client's id can already exist: a fresh UUIDv7 needs no lookup (one round trip less).
        client_ids = [p.event.id for p in batch if p.client_id]
        existing = self._repo.find(client_ids) if client_ids else {}
        first: dict[str, _Prepared] = {}
        fresh: list[_Prepared] = []
        pending: list[tuple[_Prepared, Receipt]] = []
        answers: dict[str, Answer] = {}
        for p in batch:
            event_id = p.event.id
            if event_id in first:
                continue
            first[event_id] = p
            if event_id in existing:
                answers[event_id] = _against(existing[event_id], p)
            else:
                fresh.append(p)
        new_bytes = 0
        if fresh:
            stored = self._store_and_record(fresh)
            answers.update(stored)
            pending = [(p, a) for p in fresh if _is_new(a := stored[p.event.id])]  # type: ignore[misc]
            new_bytes = sum(len(p.body) for p, _ in pending)
            if publish:
                published = self._publish(pending)
                if published:
                    replace = msgspec.structs.replace
                    for p, a in pending:
                        if p.event.id in published:
                            answers[p.event.id] = replace(a, status=EventStatus.PUBLISHED)
                pending = []
        if len(first) == len(batch):  # no id twice in this call
            out = [answers[p.event.id] for p in batch]
        else:
            out = []
            for p in batch:
                answer = answers[p.event.id]
                if p is not first[p.event.id]:  # the same id again in one call: it follows the first
                    answer = _repeat(answer, first[p.event.id], p)
                out.append(answer)
        self._count(out, new_bytes)
        return out, pending

    def _count(self, answers: list[Answer], new_bytes: int) -> None:
        receipts = [a.duplicate for a in answers if isinstance(a, Receipt)]
        duplicates = sum(receipts)
        new = len(receipts) - duplicates
        refused = len(answers) - len(receipts)  # the others are errors
        self._observer.accepted(new, new_bytes)
        self._observer.duplicates(duplicates)
        if refused:
            self._observer.rejected(refused)

    def _store_and_record(self, fresh: list[_Prepared]) -> dict[str, Answer]:
        first = fresh[0]
        key, lines, data, content_type = raw_object(first.event.id, first.event.received_at,
                                                    [p.body for p in fresh], client_id=first.client_id)
        try:
            self._store.put(key, data, content_type)
        except Unavailable:
            self._observer.failed(len(fresh))
            raise
        except Refused as e:
            return self._one_by_one(fresh) if len(fresh) > 1 else {fresh[0].event.id: e}
        try:
            recorded = self._repo.record(_metadata(fresh, key, lines))
        except Unavailable as e:
            self._observer.failed(len(fresh))
            if e.uncertain:  # the rows may have been committed: keep an accepted event's bytes
                self._discard_unrecorded(key, [p.event.id for p in fresh])
            else:
                self._discard(key)
            raise
        except Refused as e:
            self._discard(key)  # a refused statement wrote nothing: the object is no event's
            return self._one_by_one(fresh) if len(fresh) > 1 else {fresh[0].event.id: e}
        answers: dict[str, Answer] = {}
        stored = EventStatus.STORED
        for p, line, rec in zip(fresh, lines, recorded, strict=True):
            event_id = p.event.id
            # Not created: a concurrent request for the same id recorded first and is the event.
            answers[event_id] = (
                Receipt(id=event_id, object_key=key, status=stored, line=line) if rec.created
                else _against(rec.metadata, p)
            )
        if not any(rec.created for rec in recorded):
            self._discard(key)  # our own attempt's key: no accepted event's bytes are in it
        return answers

    def _one_by_one(self, fresh: list[_Prepared]) -> dict[str, Answer]:
        """Isolate what a store refused: each item on its own object and its own record."""
        log.warning("a store refused a write of %d events; retrying them one by one", len(fresh))
        answers: dict[str, Answer] = {}
        for p in fresh:
            try:
                answers.update(self._store_and_record([p]))
            except Unavailable as e:
                answers[p.event.id] = e
        return answers

    def _publish(self, accepted: list[tuple[_Prepared, Receipt]]) -> set[str]:
        """Publish now, or leave it to the relay while the bus is known to be down.

        Returns the ids published. After a failed publish, requests skip the bus for
        `publish_pause` seconds, so an outage costs one timeout, not one per request.
        """
        if not accepted:
            return set()
        if self._publish_breaker.open:
            self._observer.publish_deferred(len(accepted))
            return set()
        try:
            self._bus.publish([bus_message_for(r.id, p.body, r.object_key, r.line) for p, r in accepted])
        except Unavailable as e:
            log.warning("publish deferred to the outbox relay for %d event(s): %s", len(accepted), e)
            self._publish_breaker.failed()
            self._observer.publish_deferred(len(accepted))
            return set()
        self._publish_breaker.succeeded()
        self._observer.published(len(accepted))
        ids = [r.id for _, r in accepted]
        try:
            self._repo.mark_published(ids, self._clock())
        except Unavailable as e:
            # Published but still `stored`: the relay publishes again and the sink dedupes.
            log.warning("could not mark %d event(s) published: %s", len(accepted), e)
        return set(ids)

    def _discard(self, key: str) -> None:
        try:
            self._store.delete(key)
        except WotrError as e:  # the store itself may be what failed
            log.error("could not remove object %s of a refused write: %s", key, e)

    def _discard_unrecorded(self, key: str, ids: list[str]) -> None:
        """Remove an object whose metadata write failed, unless the write did commit.

        A failure can be reported after the commit went through; the object is then an
        accepted event's. Only when the repository confirms no row names it is it removed;
        when it cannot tell, the object stays: an object no row names is not an event, and
        every reader of the archive ignores it.
        """
        try:
            named = any(m.object_key == key for m in self._repo.find(ids).values())
        except WotrError as e:
            log.warning("object %s left in the archive without metadata (not an event): %s", key, e)
            return
        if not named:
            self._discard(key)


def _metadata(fresh: list[_Prepared], key: str, lines: Sequence[int | None]) -> list[EventMetadata]:
    """The metadata rows of events archived in the object `key`, at `lines`."""
    return [
        EventMetadata(
            id=(e := p.event).id, object_key=key, line=line, size=len(p.body), checksum=sha256_hex(p.body),
            received_at=e.received_at, source=e.source, type=e.type, fingerprint=p.fingerprint,
        )
        for p, line in zip(fresh, lines, strict=True)
    ]


def _is_new(answer: Answer) -> bool:
    return isinstance(answer, Receipt) and not answer.duplicate


def _against(existing: EventMetadata, p: _Prepared) -> Answer:
    """A second attempt for a recorded id: the first receipt when the content is the same."""
    if existing.fingerprint is not None and existing.fingerprint != p.fingerprint:
        return _conflict(existing.id)
    return Receipt(
        id=existing.id, object_key=existing.object_key, status=existing.status, duplicate=True, line=existing.line
    )


def _repeat(first_answer: Answer, first: _Prepared, p: _Prepared) -> Answer:
    if p.fingerprint != first.fingerprint:
        return _conflict(p.event.id)
    if isinstance(first_answer, Receipt):
        return msgspec.structs.replace(first_answer, duplicate=True)
    return first_answer


def _conflict(event_id: str) -> Conflict:
    return Conflict(f"event id {event_id!r} was already accepted with different content")


def _result(index: int, answer: Answer) -> BatchItemResult:
    if isinstance(answer, Receipt):
        return BatchItemResult(
            index=index, id=answer.id, object_key=answer.object_key, line=answer.line,
            status=answer.status.value, duplicate=answer.duplicate,
        )
    if isinstance(answer, InvalidEvent):
        return BatchItemResult(index=index, error=answer.message, code=answer.code, field=answer.field)
    return BatchItemResult(index=index, error=str(answer), code=answer.code)
