"""Outbox relay: publish the events whose metadata stayed `stored`, then mark them `published`.

The raw object is the source of truth, so the relay republishes exactly the archived
bytes, verified against the checksum in the metadata row. Rows are leased
(`claim_pending`) so several relays can run at once; a relay that dies mid-batch lets
its lease expire and another one picks the rows up.

An event whose bytes are missing or do not match its checksum is a fault, never data:
it is logged and counted (`RelayObserver.fault`), not published, and stays `stored`,
so it is reported again each time its lease expires until an operator deals with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from ..archive import ChecksumMismatch, bus_message_for, event_bytes, where
from ..errors import NotFound
from ..models import BusMessage
from ..ports import EventBus, MetadataRepo, ObjectStore
from .ingest import utcnow
from .observer import NullObserver, RelayObserver

__all__ = ["OutboxRelay"]

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        repo: MetadataRepo,
        store: ObjectStore,
        bus: EventBus,
        *,
        grace: timedelta = timedelta(seconds=10),
        lease: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = utcnow,
        observer: RelayObserver | None = None,
    ) -> None:
        self._repo = repo
        self._store = store
        self._bus = bus
        self._grace = grace
        self._lease = lease
        self._clock = clock
        self._observer = observer or NullObserver()

    def run_once(self, limit: int = 1000) -> int:
        """Publish one batch of overdue events; returns how many were published.

        Raises `Unavailable` when the bus, store or repo is down; the leased rows are
        retried after their lease expires.
        """
        now = self._clock()
        claimed = self._repo.claim_pending(limit, now - self._grace, self._lease.total_seconds())
        if not claimed:
            return 0
        messages: list[BusMessage] = []
        ids: list[str] = []
        objects: dict[str, bytes | None] = {}  # a batch object serves all its pending lines with one read
        for meta in claimed:
            if meta.object_key not in objects:
                try:
                    objects[meta.object_key] = self._store.get(meta.object_key)
                except NotFound:
                    objects[meta.object_key] = None
            obj = objects[meta.object_key]
            try:
                if obj is None:
                    raise NotFound(f"object {meta.object_key} does not exist")
                body = event_bytes(meta, obj)
            except NotFound as e:
                log.error("event %s is recorded but its raw bytes (%s) are missing; left stored: %s", meta.id, where(meta), e)
                self._observer.fault("missing")
                continue
            except ChecksumMismatch as e:
                log.error("event %s not published, its archived bytes are not the accepted ones; left stored: %s", meta.id, e)
                self._observer.fault("checksum")
                continue
            messages.append(bus_message_for(meta.id, body, meta.object_key, meta.line))
            ids.append(meta.id)
        if messages:
            self._bus.publish(messages)
            self._repo.mark_published(ids, self._clock())
            self._observer.relayed(len(ids))
        return len(ids)
