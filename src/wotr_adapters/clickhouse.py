"""ClickHouse analytics sink on clickhouse-connect.

The same code serves a ClickHouse server over HTTP and the in-process engine through a
`chdb://` DSN (the embedded profile). The table deduplicates by event id
(ReplacingMergeTree), and reads use FINAL, so a batch written twice still counts once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from wotr_domain.errors import ConfigError, Unavailable
from wotr_domain.models import AnalyticsRow

from .connections import ClickHouseConnection

__all__ = ["ClickHouseAnalyticsSink", "clickhouse_client"]

TABLE = "ingested_data"
_COLUMNS = ["id", "created_at", "event_time", "source", "type", "payload", "object_key"]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def clickhouse_client(conn: ClickHouseConnection) -> Any:
    """Build a clickhouse-connect client for a server or, with a `chdb://` DSN, the engine."""
    import clickhouse_connect

    try:
        if conn.dsn is not None:
            return clickhouse_connect.get_client(dsn=conn.dsn)
        return clickhouse_connect.get_client(
            host=conn.host, port=conn.port, username=conn.user, password=conn.password,
            autogenerate_session_id=False, connect_timeout=5, send_receive_timeout=60,
        )
    except Exception as e:  # driver and engine raise a variety of types here
        raise Unavailable("clickhouse", f"cannot connect: {e}") from e


def _ddl(database: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{TABLE} (
            id          String,
            created_at  DateTime64(6, 'UTC'),
            event_time  Nullable(DateTime64(6, 'UTC')),
            source      LowCardinality(String),
            type        LowCardinality(String),
            payload     String,
            object_key  String,
            loaded_at   DateTime64(6, 'UTC') DEFAULT now64(6)
        )
        ENGINE = ReplacingMergeTree(loaded_at)
        PARTITION BY toYYYYMM(created_at)
        ORDER BY id""",
    ]


def _utc(value: datetime | None) -> datetime | None:
    """The engine hands back naive datetimes for UTC columns; make them aware again."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class ClickHouseAnalyticsSink:
    """Writes one INSERT per batch into `<database>.ingested_data`."""

    def __init__(self, client: Any, database: str = "wotr") -> None:
        if not _IDENT.fullmatch(database):
            raise ConfigError("CLICKHOUSE_DB", f"must be a plain identifier, got {database!r}")
        self._client = client
        self._db = database
        self._table = f"{database}.{TABLE}"
        self._lock = threading.Lock()  # the in-process engine runs one query at a time per client

    def _run(self, what: str, fn, *args, **kwargs):
        with self._lock:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # clickhouse-connect and chdb errors alike
                raise Unavailable("clickhouse", f"{what} failed: {e}") from e

    def start(self) -> None:
        for statement in _ddl(self._db):
            self._run("schema creation", self._client.command, statement)

    def close(self) -> None:
        """Nothing to release: the client belongs to whoever built it (the container)."""

    def check(self) -> None:
        self._run("health check", self._client.command, "SELECT 1")

    def write(self, rows: Sequence[AnalyticsRow]) -> None:
        if not rows:
            return
        data = [[r.id, r.created_at, r.event_time, r.source, r.type, r.payload, r.object_key] for r in rows]
        self._run("insert", self._client.insert, self._table, data, column_names=_COLUMNS)

    def latest(self, limit: int = 10) -> list[AnalyticsRow]:
        result = self._run(
            "query",
            self._client.query,
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table} FINAL ORDER BY created_at DESC, id DESC LIMIT {{limit:UInt32}}",
            parameters={"limit": int(limit)},
        )
        return [
            AnalyticsRow(id=r[0], created_at=_utc(r[1]), event_time=_utc(r[2]), source=r[3], type=r[4], payload=r[5], object_key=r[6])
            for r in result.result_rows
        ]

    def count(self) -> int:
        result = self._run("count", self._client.query, f"SELECT uniqExact(id) FROM {self._table}")
        return int(result.result_rows[0][0])
