"""Replay: republish archived events to the bus, from the raw archive.

The archive is the source of truth. Replay walks the metadata rows of the events received
in a date range (an object no row names is not an event), reads each object once,
verifies every event's bytes against its checksum and publishes exactly those bytes,
keyed by id, as the API did. The sink deduplicates by id, so replaying twice leaves every
store as it was. Missing or mismatching bytes are faults: counted in the report, logged
with the event id, never published.

Uses: rebuilding the analytics table after it was lost, or filling a new downstream
(publish to another topic by handing replay a bus on that topic).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time as day_time, timedelta

import msgspec

from ..archive import ChecksumMismatch, bus_message_for, event_bytes, where
from ..errors import NotFound
from ..models import BusMessage, EventMetadata
from ..ports import EventBus, MetadataRepo, ObjectStore

__all__ = ["Replay", "ReplayReport"]

log = logging.getLogger(__name__)


class ReplayReport(msgspec.Struct, kw_only=True):
    """What a replay did so far; handed to the progress callback after every batch."""

    events: int = 0  # metadata rows considered (after the source filter)
    objects: int = 0  # raw objects read
    published: int = 0  # events published (0 on a dry run)
    verified: int = 0  # events whose bytes matched their checksum
    mismatches: int = 0  # events whose bytes did not match: not published
    missing: int = 0  # events whose object or line is gone: not published
    seconds: float = 0.0


class Replay:
    def __init__(
        self,
        repo: MetadataRepo,
        store: ObjectStore,
        bus: EventBus,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repo
        self._store = store
        self._bus = bus
        self._sleep = sleep
        self._monotonic = monotonic

    def run(
        self,
        since: date,
        until: date | None = None,
        *,
        source: str | None = None,
        dry_run: bool = False,
        rate: float | None = None,
        batch_size: int = 1000,
        progress: Callable[[ReplayReport], None] | None = None,
    ) -> ReplayReport:
        """Replay the events received from `since` to `until` (inclusive, UTC dates).

        `source` keeps only that source's events; `dry_run` reads and verifies but
        publishes nothing; `rate` caps events published per second. Raises `Unavailable`
        when a dependency is down (a rerun publishes again; the sink dedupes).
        """
        until = until or since
        if until < since:
            raise ValueError(f"until ({until}) is before since ({since})")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if rate:  # small rates publish in small steps instead of bursts
            batch_size = max(1, min(batch_size, int(rate)))
        report = ReplayReport()
        started = self._monotonic()
        pending: list[BusMessage] = []
        for meta, obj in self._rows_with_objects(since, until, source, report):
            body = self._bytes(meta, obj, report)
            if body is None:
                continue
            report.verified += 1
            pending.append(bus_message_for(meta.id, body, meta.object_key, meta.line))
            if len(pending) >= batch_size:
                self._publish(pending, report, dry_run, rate, started, progress)
                pending = []
        if pending:
            self._publish(pending, report, dry_run, rate, started, progress)
        report.seconds = self._monotonic() - started
        if progress is not None:
            progress(report)
        return report

    def _rows_with_objects(
        self, since: date, until: date, source: str | None, report: ReplayReport
    ) -> Iterator[tuple[EventMetadata, bytes | None]]:
        day = since
        while day <= until:
            start = datetime.combine(day, day_time(0), tzinfo=UTC)
            current_key, current = None, None
            for meta in self._repo.received_between(start, start + timedelta(days=1)):
                if source is not None and meta.source != source:
                    continue
                report.events += 1
                if meta.object_key != current_key:  # rows come by object: one read per object
                    current_key = meta.object_key
                    try:
                        current = self._store.get(meta.object_key)
                        report.objects += 1
                    except NotFound:
                        current = None
                yield meta, current
            day += timedelta(days=1)

    def _bytes(self, meta: EventMetadata, obj: bytes | None, report: ReplayReport) -> bytes | None:
        try:
            if obj is None:
                raise NotFound(f"object {meta.object_key} does not exist")
            return event_bytes(meta, obj)
        except NotFound as e:
            report.missing += 1
            log.error("replay: event %s not published, its bytes (%s) are missing: %s", meta.id, where(meta), e)
        except ChecksumMismatch as e:
            report.mismatches += 1
            log.error("replay: event %s not published, its bytes are not the accepted ones: %s", meta.id, e)
        return None

    def _publish(
        self,
        messages: list[BusMessage],
        report: ReplayReport,
        dry_run: bool,
        rate: float | None,
        started: float,
        progress: Callable[[ReplayReport], None] | None,
    ) -> None:
        if not dry_run:
            if rate:  # hold the average at or below `rate` events/s
                ahead = (report.published + len(messages)) / rate - (self._monotonic() - started)
                if ahead > 0:
                    self._sleep(ahead)
            self._bus.publish(messages)
            report.published += len(messages)
        report.seconds = self._monotonic() - started
        if progress is not None:
            progress(report)
