"""PostgreSQL side of the API edge (local profile): write keys and shared rate limits.

Two tables in the metadata schema, versioned like the metadata itself (a migrations list
applied under an advisory lock, its own version table `edge_schema_version`):

- `write_keys`: one row per key, only its SHA-256 (`WriteKey`);
- `rate_limits`: one row per rate-limited client (key id or address): its token bucket
  as a GCRA "theoretical arrival time". UNLOGGED: no WAL, so a take is cheap; a crash
  of the server empties it, which only forgives the clients their recent requests.

Both take the process's connection pool (shared with the metadata repository), or a
function building one, like `PostgresMetadataRepo`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from wotr_domain.errors import Conflict, NotFound, Refused
from wotr_domain.models import WriteKey

from .postgres_common import Migrations, OnPooledSchema, PooledSchema, utc

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["MIGRATIONS", "PostgresKeyStore", "PostgresRateLimiter"]

log = logging.getLogger(__name__)

# Each entry is one schema version; never edit a released entry, append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE {schema}.write_keys (
            id          text PRIMARY KEY,
            name        text NOT NULL,
            secret_hash text NOT NULL,
            source      text,
            created_at  timestamptz NOT NULL,
            revoked_at  timestamptz
        )""",
        """CREATE UNLOGGED TABLE {schema}.rate_limits (
            bucket text PRIMARY KEY,
            tat    timestamptz NOT NULL
        )""",
    ],
]

_COLUMNS = "id, name, secret_hash, source, created_at, revoked_at"


def _key(r: tuple) -> WriteKey:
    return WriteKey(id=r[0], name=r[1], secret_hash=r[2], source=r[3], created_at=utc(r[4]), revoked_at=utc(r[5]))


_EDGE = Migrations("edge", "edge_schema_version", MIGRATIONS)


class PostgresKeyStore(OnPooledSchema):
    """Table `<schema>.write_keys`."""

    def __init__(
        self, pool: ConnectionPool | Callable[[], ConnectionPool], *, schema: str = "public", start_timeout: float = 10.0
    ) -> None:
        self._db = PooledSchema(pool, schema=schema, start_timeout=start_timeout, migrations=_EDGE, what="key store",
                                log=log)
        self.schema = schema
        q = self._db.query
        self._insert = q(f"INSERT INTO {{t}} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)", t="write_keys")
        self._select = q(f"SELECT {_COLUMNS} FROM {{t}} WHERE id = %s", t="write_keys")
        self._list = q(f"SELECT {_COLUMNS} FROM {{t}} ORDER BY created_at, id", t="write_keys")
        self._revoke = q("UPDATE {t} SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", t="write_keys")

    def add(self, key: WriteKey) -> None:
        try:
            with self._db.cursor() as cur:
                cur.execute(self._insert, (key.id, key.name, key.secret_hash, key.source, key.created_at, key.revoked_at))
        except Refused as e:
            if "write_keys_pkey" in str(e):
                raise Conflict(f"write key {key.id!r} exists already") from e
            raise

    def get(self, key_id: str) -> WriteKey:
        with self._db.cursor() as cur:
            cur.execute(self._select, (key_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"write key {key_id!r} does not exist")
        return _key(row)

    def list(self) -> list[WriteKey]:
        with self._db.cursor() as cur:
            cur.execute(self._list)
            return [_key(r) for r in cur.fetchall()]

    def revoke(self, key_id: str, at: datetime) -> WriteKey:
        with self._db.cursor() as cur:
            cur.execute(self._revoke, (at, key_id))
            cur.execute(self._select, (key_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"write key {key_id!r} does not exist")
        return _key(row)


class PostgresRateLimiter(OnPooledSchema):
    """Token buckets shared by every API process on the database: table `<schema>.rate_limits`.

    `take(bucket, interval, burst)` is one statement (GCRA: the row holds the bucket's
    theoretical arrival time; the upsert moves it on by `interval` only if that stays
    within `burst` intervals of now), atomic under the row lock, timed by the database
    clock so that API hosts need not agree on the time. Returns `(allowed, ahead)`:
    `ahead` is how far the bucket's time is ahead of now, in seconds, after the take
    (allowed) or as it stands (refused).
    """

    def __init__(
        self,
        pool: ConnectionPool | Callable[[], ConnectionPool],
        *,
        schema: str = "public",
        start_timeout: float = 10.0,
        sweep_every: float = 60.0,
    ) -> None:
        self._db = PooledSchema(pool, schema=schema, start_timeout=start_timeout, migrations=_EDGE, what="rate limiter",
                                log=log)
        self.schema = schema
        q = self._db.query
        self._take = q(
            "INSERT INTO {t} AS r (bucket, tat) VALUES (%(bucket)s, statement_timestamp() + make_interval(secs => %(t)s)) "
            "ON CONFLICT (bucket) DO UPDATE SET tat = greatest(r.tat, statement_timestamp()) + make_interval(secs => %(t)s) "
            "WHERE greatest(r.tat, statement_timestamp()) + make_interval(secs => %(t)s) "
            "<= statement_timestamp() + make_interval(secs => %(tau)s) "
            "RETURNING extract(epoch FROM r.tat - statement_timestamp())::float8",
            t="rate_limits",
        )
        self._ahead = q(
            "SELECT extract(epoch FROM tat - statement_timestamp())::float8 FROM {t} WHERE bucket = %s", t="rate_limits"
        )
        # A bucket whose time has passed is full: the same as no row.
        self._sweep = q("DELETE FROM {t} WHERE tat < statement_timestamp()", t="rate_limits")
        self._sweep_every = sweep_every
        self._swept = time.monotonic()

    def take(self, bucket: str, interval: float, burst: int) -> tuple[bool, float]:
        with self._db.cursor() as cur:
            cur.execute(self._take, {"bucket": bucket, "t": interval, "tau": interval * burst})
            row = cur.fetchone()
            if row is not None:
                allowed, ahead = True, row[0]
            else:
                cur.execute(self._ahead, (bucket,))
                found = cur.fetchone()
                allowed, ahead = False, (found[0] if found else interval)
            if time.monotonic() - self._swept > self._sweep_every:
                self._swept = time.monotonic()
                cur.execute(self._sweep)
        return allowed, max(0.0, ahead)
