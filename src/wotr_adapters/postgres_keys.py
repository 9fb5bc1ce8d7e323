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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from wotr_domain.errors import Conflict, NotFound, Refused, Unavailable
from wotr_domain.models import WriteKey

if TYPE_CHECKING:
    from psycopg import Cursor
    from psycopg.rows import TupleRow
    from psycopg_pool import ConnectionPool

__all__ = ["MIGRATIONS", "PostgresKeyStore", "PostgresRateLimiter"]

log = logging.getLogger(__name__)

DEPENDENCY = "postgresql"

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


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _key(r: tuple) -> WriteKey:
    return WriteKey(id=r[0], name=r[1], secret_hash=r[2], source=r[3], created_at=_utc(r[4]), revoked_at=_utc(r[5]))


class _Tables:
    """The pool, the migrations and the error translation both adapters share."""

    def __init__(self, pool: ConnectionPool | Callable[[], ConnectionPool], schema: str, start_timeout: float) -> None:
        from psycopg import sql

        self._make_pool = pool if callable(pool) else None
        self._pool: ConnectionPool | None = None if callable(pool) else pool
        self.schema = schema
        self.start_timeout = start_timeout
        self._sql = sql

    def table(self, name: str):
        return self._sql.Identifier(self.schema, name)

    def query(self, text: str, **tables: str):
        return self._sql.SQL(text).format(**{k: self.table(v) for k, v in tables.items()})

    def start(self) -> None:
        if self._pool is None or (self._make_pool is not None and self._pool.closed):
            self._pool = self._make_pool()
        try:
            self._pool.open()
            with self.cursor(timeout=self.start_timeout) as cur:
                self._migrate(cur)
        except Unavailable:
            if self._make_pool is not None:  # ours to rebuild: stop its reconnect attempts
                self._pool.close()
            raise

    def _migrate(self, cur: Cursor[TupleRow]) -> None:
        sql = self._sql
        schema = sql.Identifier(self.schema)
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"wotr-edge-migrations:{self.schema}",))
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
        if cur.fetchone() is None:
            # The metadata repository may be creating it at this moment (another lock).
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        versions = self.table("edge_schema_version")
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(versions))
        cur.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(versions))
        current = cur.fetchone()[0]
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                cur.execute(sql.SQL(statement).format(schema=schema))
            cur.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(versions), (version,))
            log.info("edge schema %s migrated to version %d", self.schema, version)

    def close(self) -> None:
        if self._make_pool is not None and self._pool is not None:  # only a pool it built itself
            self._pool.close()

    def check(self) -> None:
        with self.cursor(timeout=min(self.start_timeout, 3.0)) as cur:
            cur.execute("SELECT 1")

    @contextmanager
    def cursor(self, *, timeout: float | None = None) -> Iterator[Cursor[TupleRow]]:
        """A cursor in one transaction; data errors become `Refused`, connection and server
        errors `Unavailable`, programming errors are raised as they are."""
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        if self._pool is None:
            raise Unavailable(DEPENDENCY, "key store not started")
        try:
            with self._pool.connection(timeout=timeout) as conn:
                with conn.cursor() as cur:
                    yield cur
        except (PoolClosed, PoolTimeout) as e:
            raise Unavailable(DEPENDENCY, f"no connection available: {e}") from e
        except (psycopg.DataError, psycopg.IntegrityError) as e:
            raise Refused(DEPENDENCY, f"{type(e).__name__}: {str(e).strip()}") from e
        except (psycopg.ProgrammingError, psycopg.NotSupportedError):
            raise
        except psycopg.Error as e:
            raise Unavailable(DEPENDENCY, f"{type(e).__name__}: {str(e).strip()}") from e


class PostgresKeyStore:
    """Table `<schema>.write_keys`."""

    def __init__(
        self, pool: ConnectionPool | Callable[[], ConnectionPool], *, schema: str = "public", start_timeout: float = 10.0
    ) -> None:
        self._db = _Tables(pool, schema, start_timeout)
        self.schema = schema
        q = self._db.query
        self._insert = q(f"INSERT INTO {{t}} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)", t="write_keys")
        self._select = q(f"SELECT {_COLUMNS} FROM {{t}} WHERE id = %s", t="write_keys")
        self._list = q(f"SELECT {_COLUMNS} FROM {{t}} ORDER BY created_at, id", t="write_keys")
        self._revoke = q("UPDATE {t} SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", t="write_keys")

    def start(self) -> None:
        self._db.start()

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.check()

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


class PostgresRateLimiter:
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
        self._db = _Tables(pool, schema, start_timeout)
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

    def start(self) -> None:
        self._db.start()

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.check()

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
