"""SQLite metadata repository for the embedded profile (and the outbox it doubles as)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wotr_domain.errors import NotFound
from wotr_domain.models import ArchivedEvent, EventMetadata, EventStatus, Recorded

from .sqlite_db import SqliteDatabase, from_text, to_text

__all__ = ["SqliteMetadataRepo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_metadata (
    id           TEXT PRIMARY KEY,
    object_key   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    checksum     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('stored', 'published')),
    published_at TEXT,
    source       TEXT,
    type         TEXT,
    lease_until  TEXT,
    recorded_at  TEXT,
    line         INTEGER,
    fingerprint  TEXT
);
"""
# Columns added after the first version (`recorded_at`: the outbox relay's clock; `line`: the
# event's line in an NDJSON batch object); older files get them at start.
_UPGRADES = {
    "recorded_at": "ALTER TABLE event_metadata ADD COLUMN recorded_at TEXT",
    "line": "ALTER TABLE event_metadata ADD COLUMN line INTEGER",
    "fingerprint": "ALTER TABLE event_metadata ADD COLUMN fingerprint TEXT",
}
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS event_metadata_outbox ON event_metadata (recorded_at, id) WHERE status = 'stored'",
    "CREATE INDEX IF NOT EXISTS event_metadata_received ON event_metadata (received_at)",
)

_COLUMNS = "id, object_key, size, checksum, received_at, status, published_at, source, type, line, fingerprint"


def _row(r: tuple) -> EventMetadata:
    return EventMetadata(
        id=r[0],
        object_key=r[1],
        size=r[2],
        checksum=r[3],
        received_at=from_text(r[4]),
        status=EventStatus(r[5]),
        published_at=from_text(r[6]),
        source=r[7],
        type=r[8],
        line=r[9],
        fingerprint=r[10],
    )


class SqliteMetadataRepo:
    def __init__(self, path: str | Path) -> None:
        self._db = SqliteDatabase(path, name="metadata repo", schema=_SCHEMA)

    def start(self) -> None:
        self._db.open()
        with self._db.transaction() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(event_metadata)")}
            for column, statement in _UPGRADES.items():
                if column not in columns:
                    conn.execute(statement)
            for index in _INDEXES:
                conn.execute(index)
            conn.execute("PRAGMA user_version = 4")

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.query("SELECT 1")

    def record(self, items: Sequence[EventMetadata]) -> list[Recorded]:
        if not items:
            return []
        with self._db.transaction() as conn:
            existing = self._find(conn, [i.id for i in items])
            new = {}
            for item in items:
                if item.id not in existing and item.id not in new:
                    new[item.id] = item
            recorded_at = to_text(datetime.now(UTC))
            conn.executemany(
                f"INSERT INTO event_metadata ({_COLUMNS}, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (m.id, m.object_key, m.size, m.checksum, to_text(m.received_at), m.status.value,
                     to_text(m.published_at), m.source, m.type, m.line, m.fingerprint, recorded_at)
                    for m in new.values()
                ],
            )
        out: list[Recorded] = []
        answered: set[str] = set()
        for item in items:
            if item.id in existing:
                out.append(Recorded(metadata=existing[item.id], created=False))
            else:
                out.append(Recorded(metadata=new[item.id], created=item.id not in answered))
                answered.add(item.id)
        return out

    @staticmethod
    def _find(conn, ids: Sequence[str]) -> dict[str, EventMetadata]:
        found: dict[str, EventMetadata] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in conn.execute(f"SELECT {_COLUMNS} FROM event_metadata WHERE id IN ({marks})", chunk):
                found[r[0]] = _row(r)
        return found

    def get(self, event_id: str) -> EventMetadata:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM event_metadata WHERE id = ?", (event_id,))
        if not rows:
            raise NotFound(f"event {event_id!r} does not exist")
        return _row(rows[0])

    def find(self, event_ids: Sequence[str]) -> dict[str, EventMetadata]:
        if not event_ids:
            return {}
        with self._db.transaction() as conn:
            return self._find(conn, event_ids)

    def _update_each(self, statement: str, rows: list[tuple]) -> int:
        """Run `statement` once per parameter row, in one transaction; returns rows changed."""
        if not rows:
            return 0
        with self._db.transaction() as conn:
            return conn.executemany(statement, rows).rowcount

    def mark_published(self, event_ids: Sequence[str], at: datetime) -> int:
        return self._update_each(
            "UPDATE event_metadata SET status = 'published', published_at = ?, lease_until = NULL "
            "WHERE id = ? AND status = 'stored'",
            [(to_text(at), i) for i in dict.fromkeys(event_ids)],
        )

    def claim_pending(self, limit: int, older_than: datetime, lease_seconds: float) -> list[EventMetadata]:
        now = datetime.now(older_than.tzinfo)
        with self._db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM event_metadata WHERE status = 'stored' "
                "AND coalesce(recorded_at, received_at) < ? "
                "AND (lease_until IS NULL OR lease_until <= ?) ORDER BY recorded_at, received_at, id LIMIT ?",
                (to_text(older_than), to_text(now), limit),
            ).fetchall()
            until = to_text(now + timedelta(seconds=lease_seconds))
            conn.executemany("UPDATE event_metadata SET lease_until = ? WHERE id = ?", [(until, r[0]) for r in rows])
        return sorted((_row(r) for r in rows), key=lambda m: (m.received_at, m.id))

    def release(self, event_ids: Sequence[str]) -> int:
        return self._update_each(
            "UPDATE event_metadata SET lease_until = NULL "
            "WHERE id = ? AND status = 'stored' AND lease_until IS NOT NULL",
            [(i,) for i in dict.fromkeys(event_ids)],
        )

    def received_between(self, start: datetime, end: datetime) -> Iterator[EventMetadata]:
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM event_metadata WHERE received_at >= ? AND received_at < ? "
            "ORDER BY object_key, coalesce(line, -1)",
            (to_text(start), to_text(end)),
        )
        return (_row(r) for r in rows)

    def archived_between(self, start: datetime, end: datetime) -> Iterator[ArchivedEvent]:
        rows = self._db.query(
            "SELECT object_key, line, id, checksum FROM event_metadata WHERE received_at >= ? AND received_at < ?",
            (to_text(start), to_text(end)),
        )
        return (ArchivedEvent(*r) for r in rows)

    def count(self, status: EventStatus | None = None) -> int:
        if status is None:
            return self._db.query("SELECT count(*) FROM event_metadata")[0][0]
        return self._db.query("SELECT count(*) FROM event_metadata WHERE status = ?", (status.value,))[0][0]

    def prune_published(self, received_before: datetime, limit: int) -> int:
        with self._db.transaction() as conn:
            return conn.execute(
                "DELETE FROM event_metadata WHERE id IN (SELECT id FROM event_metadata "
                "WHERE status = 'published' AND received_at < ? LIMIT ?)",
                (to_text(received_before), max(limit, 0)),
            ).rowcount
