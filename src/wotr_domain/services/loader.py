"""Analytics loader: a batch from the bus into the sink, then commit (at-least-once).

The sink is idempotent by event id, so a batch written twice (crash between write and
commit) still ends as one row per event. Nothing a single message carries can stop its
partition:

- A message that cannot be turned into a row (not an event, a key that is not its id,
  or anything the decoder raises) goes to the dead-letter topic with the reason.
- A row the sink refuses (`Refused`) is isolated by splitting the batch in halves until
  the refused rows stand alone; they are dead-lettered with the sink's reason, the
  others are written, then the batch is committed.

An outage never dead-letters anything: when a write fails with `Unavailable` and the
sink's own `check()` fails too, `handle` raises `Unavailable` with nothing committed,
and the caller retries the whole batch later. When writes keep failing with
`Unavailable` (`attempts` times, with backoff) although the sink answers its check, the
batch is split as for a refusal, but a row is dead-lettered for such a failure only if
the sink took other rows of the same batch meanwhile; if it takes none, the fault is
the sink's, and the batch is left for a retry.

A batch moves as columns, not as an object per event: the loader reads a subscription's
`DeliveryColumns` when it offers them (any sequence of deliveries otherwise) and hands the
sink `AnalyticsColumns`, a sequence of rows a sink may take column by column.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import overload

import msgspec

from ..codec import EventFields, decode_event_fields, encode
from ..errors import InvalidEvent, Refused, Unavailable, WotrError
from ..models import AnalyticsRow, Delivery, Event
from ..ports import AnalyticsSink, Subscription
from .observer import LoaderObserver, NullObserver

__all__ = ["AnalyticsColumns", "AnalyticsLoader", "DeliveryColumns", "LoadOutcome", "decode_batch", "row_for"]

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 3
DEFAULT_RETRY_DELAY = 0.2  # seconds before the second attempt; doubled before each further one
MAX_REASON_CHARS = 1000  # a dead-letter reason travels in a message header

Wait = Callable[[float], bool]
"""`wait(seconds)`: pause between attempts; True when the caller is stopping (e.g. `Event.wait`)."""


class LoadOutcome(msgspec.Struct, frozen=True, kw_only=True):
    received: int
    loaded: int
    dead_lettered: int  # undecodable messages and refused rows alike
    refused: int = 0  # of `dead_lettered`: rows the sink would not take


def row_for(event: Event | EventFields, object_key: str = "") -> AnalyticsRow:
    """The analytics row of an event; a payload still in its archived JSON text is kept as is."""
    payload = event.payload
    text = bytes(payload).decode() if isinstance(payload, msgspec.Raw) else encode(payload).decode()
    return AnalyticsRow(
        id=event.id,
        created_at=event.received_at,
        event_time=event.timestamp,
        source=event.source or "",
        type=event.type or "",
        payload=text,
        object_key=object_key,
    )


def _reason(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


class DeliveryColumns(Sequence[Delivery]):
    """A polled batch that also offers, side by side, what the loader reads of each
    delivery: its key, its value and its `object-key` header (`keys`, `values`,
    `object_keys`; a missing header is ""). A subscription may return one as its list of
    deliveries: the loader then makes no object per message, and a whole `Delivery` is
    made only when one is asked for (a message to dead-letter). Subclasses make them
    (`__getitem__` with an index)."""

    __slots__ = ()
    keys: list[str | None]
    values: list[bytes]
    object_keys: list[str]

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, DeliveryColumns)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} deliveries>"


class AnalyticsColumns(Sequence[AnalyticsRow]):
    """Analytics rows held as seven columns, in `AnalyticsRow`'s field order: what the
    loader builds from a batch instead of an `AnalyticsRow` per event. It is a sequence of
    rows (made on demand) for any sink; a sink that knows this class takes `columns` as
    they are."""

    __slots__ = ("columns",)

    def __init__(
        self,
        columns: tuple[list[str], list[datetime], list[datetime | None], list[str], list[str], list[str], list[str]],
    ) -> None:
        self.columns = columns

    @classmethod
    def empty(cls) -> AnalyticsColumns:
        return cls(([], [], [], [], [], [], []))

    def __len__(self) -> int:
        return len(self.columns[0])

    @overload
    def __getitem__(self, index: int) -> AnalyticsRow: ...

    @overload
    def __getitem__(self, index: slice) -> AnalyticsColumns: ...

    def __getitem__(self, index: int | slice) -> AnalyticsRow | AnalyticsColumns:
        if isinstance(index, slice):
            return AnalyticsColumns(tuple(column[index] for column in self.columns))  # type: ignore[arg-type]
        return _row(*(column[index] for column in self.columns))

    def __iter__(self) -> Iterator[AnalyticsRow]:
        return (_row(*values) for values in zip(*self.columns))


def _row(id: str, created_at: datetime, event_time: datetime | None, source: str, type: str, payload: str,
         object_key: str) -> AnalyticsRow:
    return AnalyticsRow(id=id, created_at=created_at, event_time=event_time, source=source, type=type,
                        payload=payload, object_key=object_key)


def _decode(deliveries: Sequence[Delivery]) -> tuple[AnalyticsColumns, list[int], list[tuple[Delivery, str]]]:
    """The rows of the deliveries that are events (with the index of each one's delivery),
    and (delivery, reason) for the rest.

    Whatever turning one delivery into a row raises (`InvalidEvent`, but also
    `RecursionError`, `ValueError`, `UnicodeDecodeError`, `TypeError` on a value that is
    not bytes...) rejects that delivery alone. `MemoryError` is not the message's fault
    (messages are bounded in size) and propagates.
    """
    if isinstance(deliveries, DeliveryColumns):
        keys, values, object_keys = deliveries.keys, deliveries.values, deliveries.object_keys
    else:
        keys, values = [d.key for d in deliveries], [d.value for d in deliveries]
        object_keys = [d.headers.get("object-key", "") for d in deliveries]
    rows = AnalyticsColumns.empty()
    ids, created, event_times, sources, types, payloads, row_object_keys = rows.columns
    positions: list[int] = []
    rejects: list[tuple[Delivery, str]] = []
    for position, (key, value) in enumerate(zip(keys, values)):
        try:
            event = decode_event_fields(value)
            if key is not None and key != event.id:
                reason = f"message key {key!r} does not match event id {event.id!r}"
                rejects.append((deliveries[position], _reason(reason)))
                continue
            payload = bytes(event.payload).decode()  # the archived JSON text, as is
        except MemoryError:
            raise
        except InvalidEvent as e:
            rejects.append((deliveries[position], _reason(f"undecodable event: {e}")))
            continue
        except Exception as e:  # noqa: BLE001 - one poison message must never stop the batch
            rejects.append((deliveries[position], _reason(f"undecodable event ({type(e).__name__}): {e}")))
            continue
        ids.append(event.id)
        created.append(event.received_at)
        event_times.append(event.timestamp)
        sources.append(event.source or "")
        types.append(event.type or "")
        payloads.append(payload)
        row_object_keys.append(object_keys[position])
        positions.append(position)
    return rows, positions, rejects


def decode_batch(deliveries: Sequence[Delivery]) -> tuple[list[AnalyticsRow], list[tuple[Delivery, str]]]:
    """Pure step: rows for the deliveries that are events, and (delivery, reason) for the rest."""
    rows, _, rejects = _decode(deliveries)
    return list(rows), rejects


def _sleep(seconds: float) -> bool:
    if seconds > 0:
        time.sleep(seconds)
    return False


class AnalyticsLoader:
    """Moves events from a subscription into the analytics sink.

    `attempts` bounds the writes of one batch that fail with `Unavailable` while the sink
    answers its check, before the batch is split; `retry_delay` is the pause before the
    second attempt, doubled before each further one.
    """

    def __init__(
        self,
        subscription: Subscription,
        sink: AnalyticsSink,
        observer: LoaderObserver | None = None,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._subscription = subscription
        self._sink = sink
        self._observer = observer or NullObserver()
        self._attempts = attempts
        self._retry_delay = retry_delay

    def handle(self, deliveries: Sequence[Delivery], *, wait: Wait | None = None) -> LoadOutcome:
        """Write the batch, dead-letter what cannot be loaded, then commit.

        Raises `Unavailable` with nothing committed when the sink (or the bus) is down;
        `wait` pauses between attempts and aborts them when it returns True.
        """
        rows, positions, rejects = _decode(deliveries)
        refused = self._write(rows, wait or _sleep) if rows else []
        letters = rejects + [(deliveries[positions[i]], reason) for i, reason in refused]
        for delivery, reason in letters:
            self._subscription.dead_letter(delivery, reason)
        if deliveries:
            self._subscription.commit(deliveries)
        loaded = len(rows) - len(refused)
        self._observer.batch(len(deliveries))
        self._observer.loaded(loaded)
        if letters:
            self._observer.dead_lettered(len(letters))
        return LoadOutcome(received=len(deliveries), loaded=loaded, dead_lettered=len(letters), refused=len(refused))

    # -- writing with retries and isolation ---------------------------------------------

    def _answers(self) -> bool:
        try:
            self._sink.check()
        except WotrError:
            return False
        return True

    def _attempt(self, rows: Sequence[AnalyticsRow], wait: Wait) -> WotrError | None:
        """Write `rows`: None once written; the `Refused`, or the last `Unavailable` after
        `attempts` tries while the sink answers, when they should be split. Raises
        `Unavailable` when the sink is down (or `wait` says stop)."""
        delay = self._retry_delay
        for attempt in range(1, self._attempts + 1):
            try:
                self._sink.write(rows)
                return None
            except Refused as e:
                return e
            except Unavailable as e:
                if not self._answers():
                    raise  # an outage: the whole batch waits, nothing is split or lost
                if attempt == self._attempts:
                    return e
                if wait(delay):
                    raise  # stopping: the batch stays uncommitted
                delay *= 2
        raise AssertionError("unreachable")

    def _write(self, rows: Sequence[AnalyticsRow], wait: Wait) -> list[tuple[int, str]]:
        """Write `rows`; (index, reason) of the rows isolated as unloadable, in order."""
        error = self._attempt(rows, wait)
        if error is None:
            return []
        log.warning("analytics sink did not take a batch of %d rows, isolating the offending rows: %s", len(rows), error)
        return self._isolate(rows, error, wait)

    def _isolate(self, rows: Sequence[AnalyticsRow], error: WotrError, wait: Wait) -> list[tuple[int, str]]:
        """Bisect `rows` (which failed with `error` as a whole) until the rows that fail stand
        alone; write every part that succeeds. Raises `Unavailable` when the sink goes down
        meanwhile, or when it takes no row at all and refused none (its fault, not the rows')."""
        failed: list[tuple[int, WotrError]] = []  # single rows that failed, with their error
        loaded = 0
        pending: list[tuple[int, int, WotrError]] = [(0, len(rows), error)]
        while pending:
            lo, hi, err = pending.pop()
            if hi - lo == 1:
                failed.append((lo, err))
                continue
            mid = (lo + hi) // 2
            halves: list[tuple[int, int, WotrError]] = []
            for a, b in ((lo, mid), (mid, hi)):
                try:
                    self._sink.write(rows[a:b])
                    loaded += b - a
                except Refused as e:
                    halves.append((a, b, e))
                except Unavailable as e:
                    if not self._answers():
                        raise
                    halves.append((a, b, e))
            if not loaded and len(halves) == 2 and all(isinstance(h[2], Unavailable) for h in halves):
                raise halves[0][2]  # no part goes in: the sink's fault; retry the batch later
            pending.extend(reversed(halves))  # left half first
        bad: list[tuple[int, str]] = []
        for index, err in sorted(failed, key=lambda f: f[0]):
            if isinstance(err, Unavailable):
                if not loaded:
                    raise err  # the sink took no row: no evidence against this one
                again = self._attempt(rows[index : index + 1], wait)  # its own attempts first
                if again is None:
                    loaded += 1
                    continue
                err = again
            if isinstance(err, Refused):
                bad.append((index, _reason(f"refused by the analytics sink: {err}")))
            else:
                bad.append((index, _reason(
                    f"not loadable into the analytics sink ({self._attempts} attempts failed"
                    f" while it took other rows): {err}"
                )))
        return bad

    # -- polling --------------------------------------------------------------------------

    def poll(self, max_messages: int = 10_000, timeout: float = 0.5) -> Sequence[Delivery]:
        return self._subscription.poll(max_messages, timeout)

    def run_once(self, max_messages: int = 10_000, timeout: float = 0.5) -> LoadOutcome:
        return self.handle(self.poll(max_messages, timeout))

    def lag(self) -> dict[int, int]:
        return self._subscription.lag()

    def close(self) -> None:
        self._subscription.close()
