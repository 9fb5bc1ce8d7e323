"""Analytics loader: a batch from the bus into the sink, then commit (at-least-once).

The sink is idempotent by event id, so a batch written twice (crash between write and
commit) still ends as one row per event. A message that is not an event goes to the
dead-letter topic with the reason and never blocks its partition.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..codec import decode_event, encode
from ..errors import InvalidEvent
from ..models import AnalyticsRow, Delivery, Event
from ..ports import AnalyticsSink, Subscription
from .observer import LoaderObserver, NullObserver

__all__ = ["AnalyticsLoader", "LoadOutcome", "decode_batch", "row_for"]


class LoadOutcome(msgspec.Struct, frozen=True, kw_only=True):
    received: int
    loaded: int
    dead_lettered: int


def row_for(event: Event, object_key: str = "") -> AnalyticsRow:
    return AnalyticsRow(
        id=event.id,
        created_at=event.received_at,
        event_time=event.timestamp,
        source=event.source or "",
        type=event.type or "",
        payload=encode(event.payload).decode(),
        object_key=object_key,
    )


def decode_batch(deliveries: Sequence[Delivery]) -> tuple[list[AnalyticsRow], list[tuple[Delivery, str]]]:
    """Pure step: rows for the deliveries that are events, and (delivery, reason) for the rest."""
    rows: list[AnalyticsRow] = []
    rejects: list[tuple[Delivery, str]] = []
    for d in deliveries:
        try:
            event = decode_event(d.value)
        except InvalidEvent as e:
            rejects.append((d, f"undecodable event: {e}"))
            continue
        if d.key is not None and d.key != event.id:
            rejects.append((d, f"message key {d.key!r} does not match event id {event.id!r}"))
            continue
        rows.append(row_for(event, d.headers.get("object-key", "")))
    return rows, rejects


class AnalyticsLoader:
    """Moves events from a subscription into the analytics sink."""

    def __init__(self, subscription: Subscription, sink: AnalyticsSink, observer: LoaderObserver | None = None) -> None:
        self._subscription = subscription
        self._sink = sink
        self._observer = observer or NullObserver()

    def handle(self, deliveries: Sequence[Delivery]) -> LoadOutcome:
        """Write the batch, dead-letter the rejects, then commit; `Unavailable` leaves it uncommitted."""
        rows, rejects = decode_batch(deliveries)
        if rows:
            self._sink.write(rows)
        for delivery, reason in rejects:
            self._subscription.dead_letter(delivery, reason)
        if deliveries:
            self._subscription.commit(deliveries)
        self._observer.batch(len(deliveries))
        self._observer.loaded(len(rows))
        if rejects:
            self._observer.dead_lettered(len(rejects))
        return LoadOutcome(received=len(deliveries), loaded=len(rows), dead_lettered=len(rejects))

    def poll(self, max_messages: int = 10_000, timeout: float = 0.5) -> list[Delivery]:
        return self._subscription.poll(max_messages, timeout)

    def run_once(self, max_messages: int = 10_000, timeout: float = 0.5) -> LoadOutcome:
        return self.handle(self.poll(max_messages, timeout))

    def lag(self) -> dict[int, int]:
        return self._subscription.lag()

    def close(self) -> None:
        self._subscription.close()
