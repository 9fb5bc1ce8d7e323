"""A thread-safe SQLite database handle shared by the embedded adapters.

One connection per database file, guarded by a lock; WAL journal with full sync so a
committed row survives a crash of the process or the machine.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import NoReturn
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from wotr_domain.errors import Refused, Unavailable

__all__ = ["SqliteDatabase", "from_text", "to_text"]


def to_text(value: datetime | None) -> str | None:
    """UTC ISO-8601 with microseconds: sorts lexicographically in time order."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def from_text(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class SqliteDatabase:
    def __init__(self, path: str | Path, *, name: str, schema: str) -> None:
        self.path = Path(path)
        self.name = name
        self._schema = schema
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(self._schema)
            except (sqlite3.Error, OSError) as e:
                raise Unavailable(self.name, f"cannot open {self.path}: {e}") from e
            self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction; driver errors become `Unavailable`."""
        with self._lock:
            if self._conn is None:
                raise Unavailable(self.name, "not started")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                _translate(self.name, e)
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                _translate(self.name, e, uncertain=True)

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            if self._conn is None:
                raise Unavailable(self.name, "not started")
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                _translate(self.name, e)


def _translate(name: str, error: sqlite3.Error, *, uncertain: bool = False) -> NoReturn:
    """Data the database will never take is `Refused`; the rest (locked, I/O, full disk) `Unavailable`.

    A programming error (`ProgrammingError`, `InterfaceError`) is a bug, raised as it is.
    """
    if isinstance(error, (sqlite3.IntegrityError, sqlite3.DataError)):
        raise Refused(name, str(error)) from error
    if isinstance(error, (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.NotSupportedError)):
        raise error
    raise Unavailable(name, str(error), uncertain=uncertain) from error
