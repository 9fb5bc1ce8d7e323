"""Outbox relay: publish the events whose metadata stayed `stored`, then mark them `published`.

The raw object is the source of truth, so the relay republishes exactly the archived
bytes, verified against the checksum in the metadata row. Rows are leased
(`claim_pending`) so several relays can run at once. A batch that fails (`Unavailable`
from the store, the bus or the repo) gives its lease back (`MetadataRepo.release`) before
the error is raised, and so does a relay that stops with a batch in hand
(`release_claim`): those rows can be claimed again at once, by this relay or another. A
release that fails (PostgreSQL down) is only logged; like the claim of a relay that
dies mid-batch (SIGKILL), the lease then expires and another relay picks the rows up.

An event whose bytes are missing or do not match its checksum is a fault, never data:
it is logged and counted (`RelayObserver.fault`), not published, and stays `stored`,
so it is reported again each time its lease expires until an operator deals with it
(its lease is never released early: that would report it at every turn).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ..archive import ChecksumMismatch, bus_message_for, event_bytes, where
from ..errors import NotFound, Unavailable
from ..models import BusMessage, EventMetadata
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
        # The claim in hand: rows leased and not yet marked, and when their lease expires
        # (by `clock`, read before the claim: never later than the repo's expiry).
        self._guard = threading.Lock()
        self._held: dict[str, None] = {}
        self._held_until: datetime | None = None

    def run_once(self, limit: int = 1000) -> int:
        """Publish one batch of overdue events; returns how many were published.

        Raises `Unavailable` when the bus, store or repo is down, after releasing the
        rows it claimed (`release_claim`): they can be claimed again at once.
        """
        now = self._clock()
        claimed = self._repo.claim_pending(limit, now - self._grace, self._lease.total_seconds())
        if not claimed:
            return 0
        self._hold(dict.fromkeys(meta.id for meta in claimed), now + self._lease)
        try:
            published = self._publish(claimed)
        except Unavailable:
            self.release_claim()
            raise
        self._hold({}, None)
        return published

    def release_claim(self) -> int:
        """Give back the lease of the batch in hand, if any; returns how many rows were
        released. `run_once` calls it when a batch fails; call it when the relay stops.

        Nothing is released once the lease has expired (another relay may hold those rows
        now). A release that fails is logged, never raised: the rows then wait for their
        lease to expire, as after a crash.
        """
        with self._guard:
            ids, until = list(self._held), self._held_until
            self._held, self._held_until = {}, None
        if not ids or until is None:
            return 0
        if self._clock() >= until:
            log.info("relay: the lease of %d claimed rows has expired; nothing to release", len(ids))
            return 0
        try:
            released = self._repo.release(ids)
        except Unavailable as e:
            log.warning("relay: the lease of %d claimed rows was not released, they wait until it expires "
                        "(%s): %s", len(ids), until.isoformat(timespec="seconds"), e)
            return 0
        log.info("relay: released the lease of %d of %d claimed rows", released, len(ids))
        return released

    def _hold(self, ids: dict[str, None], until: datetime | None) -> None:
        with self._guard:
            self._held, self._held_until = ids, until

    def _unhold(self, event_id: str) -> None:
        """A faulty row keeps its lease (it is reported again when the lease expires)."""
        with self._guard:
            self._held.pop(event_id, None)

    def _publish(self, claimed: list[EventMetadata]) -> int:
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
                self._unhold(meta.id)
                continue
            except ChecksumMismatch as e:
                log.error("event %s not published, its archived bytes are not the accepted ones; left stored: %s", meta.id, e)
                self._observer.fault("checksum")
                self._unhold(meta.id)
                continue
            messages.append(bus_message_for(meta.id, body, meta.object_key, meta.line))
            ids.append(meta.id)
        if messages:
            self._bus.publish(messages)
            self._repo.mark_published(ids, self._clock())
            self._observer.relayed(len(ids))
        return len(ids)
