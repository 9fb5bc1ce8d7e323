"""SQLite key store for the embedded profile: `<data dir>/keys.db`, beside the metadata.

The API process and `wotr keys` (another process) open the same file; WAL lets the API
read while the command writes, and a revocation is visible to the next read.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from wotr_domain.errors import Conflict, NotFound, Refused
from wotr_domain.models import WriteKey

from .sqlite_db import SqliteDatabase, from_text, to_text

__all__ = ["SqliteKeyStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS write_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    source      TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
"""

_COLUMNS = "id, name, secret_hash, source, created_at, revoked_at"


def _key(r: tuple) -> WriteKey:
    return WriteKey(id=r[0], name=r[1], secret_hash=r[2], source=r[3], created_at=from_text(r[4]),
                    revoked_at=from_text(r[5]))


class SqliteKeyStore:
    def __init__(self, path: str | Path) -> None:
        self._db = SqliteDatabase(path, name="key store", schema=_SCHEMA)

    def start(self) -> None:
        self._db.open()

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.query("SELECT 1")

    def add(self, key: WriteKey) -> None:
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    f"INSERT INTO write_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (key.id, key.name, key.secret_hash, key.source, to_text(key.created_at), to_text(key.revoked_at)),
                )
        except Refused as e:  # the primary key: the id is taken
            raise Conflict(f"write key {key.id!r} exists already") from e

    def get(self, key_id: str) -> WriteKey:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM write_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFound(f"write key {key_id!r} does not exist")
        return _key(rows[0])

    def list(self) -> list[WriteKey]:
        return [_key(r) for r in self._db.query(f"SELECT {_COLUMNS} FROM write_keys ORDER BY created_at, id")]

    def revoke(self, key_id: str, at: datetime) -> WriteKey:
        with self._db.transaction() as conn:
            conn.execute("UPDATE write_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (to_text(at), key_id))
            rows = conn.execute(f"SELECT {_COLUMNS} FROM write_keys WHERE id = ?", (key_id,)).fetchall()
        if not rows:
            raise NotFound(f"write key {key_id!r} does not exist")
        return _key(rows[0])
