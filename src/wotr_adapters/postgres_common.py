"""What the PostgreSQL adapters share (`postgres.py`: the metadata repository and outbox;
`postgres_keys.py`: write keys and rate limits): one schema's tables on a psycopg pool,
versioned by a list of migrations applied under an advisory lock, and the one cursor
every statement runs through, which turns driver errors into domain errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wotr_domain.errors import Refused, Unavailable

if TYPE_CHECKING:
    from psycopg import Cursor
    from psycopg.rows import TupleRow
    from psycopg_pool import ConnectionPool

__all__ = ["DEPENDENCY", "Migrations", "OnPooledSchema", "PooledSchema", "utc"]

DEPENDENCY = "postgresql"


def utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Migrations:
    """A versioned part of a schema: `steps[i]` are the statements of version i + 1 (each
    may name `{schema}`); the applied version is kept in the table `versions`, and the
    advisory lock `wotr-<name>-migrations:<schema>` makes processes starting together
    apply each version once. Never edit a released step, append a new one."""

    name: str
    versions: str
    steps: list[list[str]]


class PooledSchema:
    """The tables of one schema on a pool: lifecycle, migrations and error translation.

    `pool` is a psycopg pool, or a function building one (e.g. `partial(postgres_pool,
    conn)`): with a function, a `start()` that timed out can simply be retried, because
    a pool that failed to open cannot be reopened. `close()` closes a pool it built, and a
    pool given built only when `closes_given_pool`. `what` names the adapter in errors.
    """

    def __init__(
        self,
        pool: ConnectionPool | Callable[[], ConnectionPool],
        *,
        schema: str,
        start_timeout: float,
        migrations: Migrations,
        what: str,
        log: logging.Logger,
        closes_given_pool: bool = False,
    ) -> None:
        from psycopg import sql

        self._make_pool = pool if callable(pool) else None
        self._pool: ConnectionPool | None = None if callable(pool) else pool
        self.schema = schema
        self.start_timeout = start_timeout
        self.migrations = migrations
        self.what = what
        self._log = log
        self._closes_given_pool = closes_given_pool
        self.sql = sql

    def table(self, name: str) -> Any:
        return self.sql.Identifier(self.schema, name)

    def query(self, text: str, **tables: str) -> Any:
        """`text` with each `{placeholder}` replaced by the table named for it in this schema."""
        return self.sql.SQL(text).format(**{k: self.table(v) for k, v in tables.items()})

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Open the pool, waiting at most `start_timeout` for a connection, and migrate.

        The wait is a checkout rather than `open(wait=True)`, which closes the pool on
        timeout: a pool given built stays usable, so a failed start can be retried.
        """
        from psycopg_pool import PoolClosed, PoolTimeout

        if self._pool is None or (self._make_pool is not None and self._pool.closed):
            self._pool = self._make_pool()
        try:
            self._pool.open()
            with self.cursor(timeout=self.start_timeout) as cur:
                self._migrate(cur)
        except PoolClosed as e:  # a pool given built and closed since
            raise Unavailable(DEPENDENCY, f"the connection pool is closed: {e}") from e
        except Unavailable as e:
            timed_out = isinstance(e.__cause__, PoolTimeout)
            detail = f"no connection within {self.start_timeout:g}s: {self._probe()}" if timed_out else ""
            if self._make_pool is not None:  # ours to rebuild: stop its reconnect attempts
                self._pool.close()
            if timed_out:
                raise Unavailable(DEPENDENCY, detail) from e.__cause__
            raise

    def _probe(self) -> str:
        """Why the pool could not connect: one direct attempt names the real cause."""
        import psycopg

        try:
            psycopg.connect(self._pool.conninfo, **self._pool.kwargs).close()
        except psycopg.Error as e:
            return str(e).strip()
        return "connection pool did not fill"

    def _migrate(self, cur: Cursor[TupleRow]) -> None:
        sql, m = self.sql, self.migrations
        schema = sql.Identifier(self.schema)
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"wotr-{m.name}-migrations:{self.schema}",))
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
        if cur.fetchone() is None:
            # Looked up first: even IF NOT EXISTS needs CREATE on the database. IF NOT EXISTS:
            # another part of the schema (under its own lock) may be creating it at this moment.
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        versions = self.table(m.versions)
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(versions))
        cur.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(versions))
        current = cur.fetchone()[0]
        for version, statements in enumerate(m.steps[current:], start=current + 1):
            for statement in statements:
                cur.execute(sql.SQL(statement).format(schema=schema))
            cur.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(versions), (version,))
            self._log.info("%s schema %s migrated to version %d", m.name, self.schema, version)

    def close(self) -> None:
        if self._pool is not None and (self._make_pool is not None or self._closes_given_pool):
            self._pool.close()

    def check(self) -> None:
        with self.cursor(timeout=min(self.start_timeout, 3.0)) as cur:
            cur.execute("SELECT 1")

    # -- statements ----------------------------------------------------------------

    @contextmanager
    def cursor(self, *, timeout: float | None = None) -> Iterator[Cursor[TupleRow]]:
        """A cursor in one transaction on a pooled connection (committed when the block
        ends, rolled back on error).

        Data the server will never take (`DataError`, `IntegrityError`: e.g. a NUL
        character in text) becomes `Refused`; connection, pool, server-state and resource
        errors become `Unavailable` (`uncertain` when the commit itself failed); a
        programming error is a bug and is raised as it is.
        """
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        if self._pool is None:
            raise Unavailable(DEPENDENCY, f"{self.what} not started")
        committing = False
        try:
            with self._pool.connection(timeout=timeout) as conn:
                with conn.cursor() as cur:
                    yield cur
                committing = True  # leaving the connection block commits
        except PoolClosed as e:
            raise Unavailable(DEPENDENCY, f"{self.what} not started or already closed") from e
        except PoolTimeout as e:
            raise Unavailable(DEPENDENCY, f"no connection available: {e}") from e
        except (psycopg.DataError, psycopg.IntegrityError) as e:
            raise Refused(DEPENDENCY, f"{type(e).__name__}: {str(e).strip()}") from e
        except (psycopg.ProgrammingError, psycopg.NotSupportedError):
            raise
        except psycopg.Error as e:
            raise Unavailable(DEPENDENCY, f"{type(e).__name__}: {str(e).strip()}", uncertain=committing) from e


class OnPooledSchema:
    """The lifecycle of an adapter whose tables are a `PooledSchema` (`self._db`)."""

    _db: PooledSchema

    def start(self) -> None:
        """Open the pool, waiting at most `start_timeout` for a connection, and migrate; a
        failed start can be retried (`PooledSchema.start`)."""
        self._db.start()

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.check()
