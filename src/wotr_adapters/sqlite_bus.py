"""A durable in-process event bus on SQLite, for the embedded profile.

An append-only log per topic with committed offsets per consumer group: the same
at-least-once semantics as Kafka, so an event published before a crash is still
delivered after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from wotr_domain.archive import dead_letter_for, dead_letter_topic
from wotr_domain.models import BusMessage, Delivery

from .sqlite_db import SqliteDatabase

__all__ = ["SqliteEventBus"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    key     TEXT,
    value   BLOB NOT NULL,
    headers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_topic ON messages (topic, seq);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp         TEXT NOT NULL,
    topic       TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);
PRAGMA user_version = 1;
"""

_headers = msgspec.json.Decoder(dict[str, str])


class SqliteEventBus:
    def __init__(self, path: str | Path, topic: str = "ingest-events") -> None:
        self._db = SqliteDatabase(path, name="event bus", schema=_SCHEMA)
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic(topic)
        self._arrived = threading.Condition()

    def start(self) -> None:
        self._db.open()

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.query("SELECT 1")

    def _append(self, topic: str, messages: Sequence[BusMessage]) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO messages (topic, key, value, headers) VALUES (?, ?, ?, ?)",
                [(topic, m.key, m.value, msgspec.json.encode(m.headers).decode()) for m in messages],
            )
        with self._arrived:
            self._arrived.notify_all()

    def publish(self, messages: Sequence[BusMessage]) -> None:
        if messages:
            self._append(self.topic, messages)

    def subscribe(self, group: str) -> _SqliteSubscription:
        return _SqliteSubscription(self, group)

    def dead_letters(self, limit: int = 100) -> list[Delivery]:
        return self._read(self.dead_letter_topic, 0, limit)

    def _read(self, topic: str, position: int, limit: int) -> list[Delivery]:
        rows = self._db.query(
            "SELECT seq, key, value, headers FROM messages WHERE topic = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (topic, position, limit),
        )
        return [
            Delivery(key=k, value=bytes(v), headers=_headers.decode(h), topic=topic, partition=0, offset=seq)
            for seq, k, v, h in rows
        ]

    def _committed(self, group: str) -> int:
        rows = self._db.query("SELECT next_offset FROM group_offsets WHERE grp = ? AND topic = ?", (group, self.topic))
        return rows[0][0] if rows else 0


class _SqliteSubscription:
    def __init__(self, bus: SqliteEventBus, group: str) -> None:
        self._bus = bus
        self._group = group
        self._position = bus._committed(group)

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            batch = self._bus._read(self._bus.topic, self._position, max_messages)
            remaining = deadline - time.monotonic()
            if batch or remaining <= 0:
                break
            with self._bus._arrived:
                self._bus._arrived.wait(min(remaining, 0.1))
        if batch:
            self._position = batch[-1].offset + 1
        return batch

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        next_offset = max(d.offset for d in deliveries) + 1
        with self._bus._db.transaction() as conn:
            conn.execute(
                "INSERT INTO group_offsets (grp, topic, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (grp, topic) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                (self._group, self._bus.topic, next_offset),
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._bus._append(self._bus.dead_letter_topic, [dead_letter_for(delivery, reason)])

    def lag(self) -> dict[int, int]:
        rows = self._bus._db.query(
            "SELECT count(*) FROM messages WHERE topic = ? AND seq >= ?",
            (self._bus.topic, self._bus._committed(self._group)),
        )
        return {0: rows[0][0]}

    def close(self) -> None:
        pass
