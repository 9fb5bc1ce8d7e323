"""ClickHouse analytics sink on clickhouse-connect.

The same code serves a ClickHouse server over HTTP and the in-process engine through a
`chdb://` DSN (the embedded profile). The table deduplicates by event id
(ReplacingMergeTree), and reads use FINAL, so a batch written twice still counts once.

Errors: only the driver's exceptions are translated (clickhouse-connect's, which wrap
the in-process engine's, and chdb's own should one escape). Connection, network and
timeout failures, and every server error that is not about the data, are `Unavailable`
(retry later); the server or the engine rejecting the data itself (a value it cannot
parse, convert or hold, a constraint, too many partitions in one INSERT), a string the
driver cannot encode, and a datetime outside DateTime64's range are `Refused` for a
write. Anything else (a programming error) propagates unchanged.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from wotr_domain.errors import ConfigError, Refused, Unavailable
from wotr_domain.models import AnalyticsRow
from wotr_domain.services.loader import AnalyticsColumns

from .connections import ClickHouseConnection

__all__ = ["ClickHouseAnalyticsSink", "clickhouse_client"]

TABLE = "ingested_data"
_COLUMNS = ["id", "created_at", "event_time", "source", "type", "payload", "object_key"]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# DateTime64's documented range. The engine stores a value outside it as raw ticks without
# complaint, but reading it back can fail (before year 1 in UTC, every read of the row
# does), so the sink refuses it instead of letting one row break the table's reads.
DATETIME64_MIN = datetime(1900, 1, 1, tzinfo=UTC)
DATETIME64_MAX = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

# Server error codes that are a verdict on the data of an INSERT, not on the server.
REFUSING_CODES = {
    6: "CANNOT_PARSE_TEXT",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    128: "TOO_LARGE_ARRAY_SIZE",
    130: "CANNOT_READ_ARRAY_FROM_TEXT",
    131: "TOO_LARGE_STRING_SIZE",
    190: "SIZES_OF_ARRAYS_DONT_MATCH",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW",
    469: "VIOLATED_CONSTRAINT",
}
# TOO_MANY_PARTS is both "too many partitions for single INSERT block" (this batch will
# never go in as one; smaller ones will) and "too many parts" (merges lag: retry later).
_TOO_MANY_PARTS = 252
_CODE = re.compile(r"\bCode:\s*(\d+)")


@functools.cache
def _driver_errors() -> tuple[type[BaseException], ...]:
    """The exception types of the drivers: clickhouse-connect's root, and chdb's when installed."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        from chdb import ChdbError
    except ImportError:  # a server-only install: no engine, no engine errors
        return (ClickHouseError,)
    return (ClickHouseError, ChdbError)


def _first_line(error: BaseException) -> str:
    """The message without the engine's stack trace (chdb appends one to some errors)."""
    text = str(error).strip()
    return text.split("Stack trace", 1)[0].strip().rstrip(",").strip()[:500] or type(error).__name__


def _code(error: BaseException) -> int | None:
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(error))
    return int(match.group(1)) if match else None


def _connection_lost(error: BaseException) -> bool:
    """Whether a driver error is the transport failing (a server gone), not the query."""
    from clickhouse_connect.driver.exceptions import OperationalError

    return isinstance(error, OperationalError)


def _refuses_data(error: BaseException) -> bool:
    """Whether a driver error is the server or engine rejecting the inserted data itself."""
    from clickhouse_connect.driver.exceptions import DataError, OperationalError, ProgrammingError

    if isinstance(error, DataError):
        return True  # the driver found a value it cannot send as the column's type
    if isinstance(error, (OperationalError, ProgrammingError)):
        return False  # transport, timeouts, retries exhausted; client-side misuse
    code = _code(error)
    if code == _TOO_MANY_PARTS:
        return "partitions for single insert" in str(error).lower()
    return code in REFUSING_CODES


def _unstorable(row: AnalyticsRow) -> str | None:
    """Why the table cannot hold `row` faithfully, or None."""
    for name in ("created_at", "event_time"):
        value = getattr(row, name)
        if value is None:
            continue
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if not DATETIME64_MIN <= aware <= DATETIME64_MAX:
            return f"{name} {value.isoformat()} is outside DateTime64's range (1900-01-01 to 2299-12-31 UTC)"
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MIN_MICROS = (DATETIME64_MIN - _EPOCH) // _MICROSECOND
_MAX_MICROS = (DATETIME64_MAX - _EPOCH) // _MICROSECOND


def _micros(values: Sequence[datetime | None]) -> list[int | None]:
    """Datetimes as integer microseconds since the epoch (a naive one is UTC; None stays
    None): what the driver sends for DateTime64(6) with the least Python work per value."""
    try:
        return [None if v is None else (v - _EPOCH) // _MICROSECOND for v in values]
    except TypeError:  # a naive datetime among them
        return [None if v is None else ((v if v.tzinfo is not None else v.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND
                for v in values]


def _in_range(micros: list[int | None]) -> bool:
    """Whether every value (None aside) is within DateTime64's range."""
    if None in micros:
        micros = [m for m in micros if m is not None]
        if not micros:
            return True
    return _MIN_MICROS <= min(micros) and max(micros) <= _MAX_MICROS


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
    except _driver_errors() as e:  # includes the engine failing to open its directory
        raise Unavailable("clickhouse", f"cannot connect: {_first_line(e)}") from e


LOCAL_TABLE = f"{TABLE}_local"  # a cluster's per-shard table, behind the Distributed `ingested_data`
# Where each replica registers its table in ClickHouse Keeper, and which replica it is:
# the server's macros fill {shard} and {replica}; {database} and {table} are the table's own.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"


def _ddl(database: str, cluster: str = "") -> list[str]:
    """The statements that create wotr's analytics table.

    One node (`cluster` blank): a ReplacingMergeTree `ingested_data`. On a cluster: every
    statement `ON CLUSTER` it; the rows live in `ingested_data_local`, a
    ReplicatedReplacingMergeTree on each shard's replicas, and `ingested_data` is a
    Distributed table over it, sharded by `cityHash64(id)`: all copies of an event land
    on one shard, where the replacing merge (and FINAL) collapses them, so readers and
    the sink keep using `ingested_data` unchanged.
    """
    if cluster and not _IDENT.fullmatch(cluster):
        raise ConfigError("the ClickHouse cluster", f"must be a plain identifier, got {cluster!r}")
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    columns = """(
            id          String,
            created_at  DateTime64(6, 'UTC'),
            event_time  Nullable(DateTime64(6, 'UTC')),
            source      LowCardinality(String),
            type        LowCardinality(String),
            payload     String,
            object_key  String,
            loaded_at   DateTime64(6, 'UTC') DEFAULT now64(6)
        )"""
    if not cluster:
        return [
            f"CREATE DATABASE IF NOT EXISTS {database}",
            f"""CREATE TABLE IF NOT EXISTS {database}.{TABLE} {columns}
        ENGINE = ReplacingMergeTree(loaded_at)
        PARTITION BY toYYYYMM(created_at)
        ORDER BY id""",
        ]
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{LOCAL_TABLE}{on_cluster} {columns}
        ENGINE = ReplicatedReplacingMergeTree('{REPLICA_PATH}', '{REPLICA_NAME}', loaded_at)
        PARTITION BY toYYYYMM(created_at)
        ORDER BY id""",
        f"""CREATE TABLE IF NOT EXISTS {database}.{TABLE}{on_cluster} AS {database}.{LOCAL_TABLE}
        ENGINE = Distributed({cluster}, {database}, {LOCAL_TABLE}, cityHash64(id))""",
    ]


_OUTFILE = re.compile(r"\bOUTFILE\b", re.IGNORECASE)
_READS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")
_COMMENTS = re.compile(r"(--[^\n]*|/\*.*?\*/)", re.DOTALL)
_REACHING_OUT = re.compile(
    r"\b(file|url|urlCluster|s3|s3Cluster|gcs|azureBlobStorage|hdfs|remote|remoteSecure|cluster|clusterAllReplicas"
    r"|mysql|postgresql|mongodb|redis|sqlite|jdbc|odbc|executable|executablePool|input|python|deltaLake|iceberg|hudi"
    r"|fuzzJSON|fuzzQuery)\s*\(", re.IGNORECASE)


def _not_a_read(query: str) -> str | None:
    """Why `query` is not a plain read of the engine's tables, or None."""
    text = _COMMENTS.sub(" ", query).strip().rstrip(";").strip()
    if not text:
        return "an empty query"
    if ";" in text:
        return "more than one statement"
    first = text.split(None, 1)[0].upper()
    if first not in _READS:
        return f"{first} is not a reading statement"
    if _OUTFILE.search(text):
        return "INTO OUTFILE writes a file"
    match = _REACHING_OUT.search(text)
    if match:
        return f"the table function {match.group(1)}() reaches outside the engine's tables"
    return None
_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)


def _utc(value: datetime | None) -> datetime | None:
    """The engine hands back naive datetimes for UTC columns; make them aware again."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class LazyClient:
    """A client built on its first call, so that an unreachable server is an `Unavailable`
    of that call (readiness says so) rather than a failure to start."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: getattr(self._get(), name)(*args, **kwargs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class ClickHouseAnalyticsSink:
    """Writes one INSERT per batch into `<database>.ingested_data`.

    With `create=False` the sink creates nothing at start: a reader of a table another
    process owns (through that process's SQL endpoint). With a `cluster`, `start()`
    creates the replicated, sharded tables on it (`_ddl`).
    """

    def __init__(self, client: Any, database: str = "wotr", *, create: bool = True, cluster: str = "") -> None:
        if not _IDENT.fullmatch(database):
            raise ConfigError("the ClickHouse database", f"must be a plain identifier, got {database!r}")
        self._client = client
        self._create = create
        self._db = database
        self._cluster = cluster
        self._schema = _ddl(database, cluster)  # refuses a bad cluster name now
        self._table = f"{database}.{TABLE}"
        self._lock = threading.Lock()  # the in-process engine runs one query at a time per client
        self._insert_types: list[Any] | None = None  # the table's column types, for inserts (`_insert`)

    def _run(self, what: str, fn, *args, **kwargs):
        """Call the driver; its errors become `Unavailable` (a write's data errors: `Refused`)."""
        writing = what == "insert"
        with self._lock:
            try:
                return fn(*args, **kwargs)
            except _driver_errors() as e:
                if writing and _refuses_data(e):
                    raise Refused("clickhouse", f"{what} rejected: {_first_line(e)}") from e
                raise Unavailable("clickhouse", f"{what} failed: {_first_line(e)}") from e
            except UnicodeEncodeError as e:
                if not writing:
                    raise
                # The driver serialises strings as UTF-8; a lone surrogate cannot be.
                raise Refused("clickhouse", f"{what} rejected: a string is not encodable as UTF-8: {e}") from e

    def start(self) -> None:
        """Create the database and table unless they exist (a reader of another process's
        engine, through its read-only SQL endpoint, finds them and writes nothing)."""
        if not self._create:
            return
        if self._run("schema check", self._client.command, f"EXISTS TABLE {self._table}"):
            return
        for statement in self._schema:
            self._run("schema creation", self._client.command, statement)

    def serve_reads(self) -> None:
        """Make this engine's SELECTs deduplicated by default (`final = 1` for the session):
        the seed's `SELECT * FROM wotr.ingested_data ...` is then correct as written."""
        self._run("session setting", self._client.command, "SET final = 1")

    def sql(self, query: str, default_format: str = "TabSeparated", parameters: dict[str, str] | None = None) -> bytes:
        """Run one read-only statement and return its output in its FORMAT (else
        `default_format`): what the process that owns the engine serves to SQL clients.

        Only reading statements are run (SELECT, WITH, SHOW, DESCRIBE, EXISTS, EXPLAIN), one
        at a time, without `INTO OUTFILE` or table functions that reach files, processes or
        the network; anything else is `Refused` before it reaches the engine. (The engine's
        own `readonly` setting cannot be used: on the shared in-process session it would
        stay set and stop the consumer's inserts.) A query the engine rejects is `Refused`.
        """
        problem = _not_a_read(query)
        if problem is not None:
            raise Refused("clickhouse", f"not served: {problem}; the SQL endpoint is read-only")
        with self._lock:
            try:
                return self._client.raw_query(query, parameters=parameters or None,
                                              fmt=None if _FORMAT.search(query) else default_format)
            except _driver_errors() as e:
                if _connection_lost(e):
                    raise Unavailable("clickhouse", f"query failed: {_first_line(e)}") from e
                raise Refused("clickhouse", _first_line(e)) from e

    def close(self) -> None:
        """Nothing to release: the client belongs to whoever built it (the container)."""

    def check(self) -> None:
        """The server answers and the table exists (so that a write failing while this
        passes is not a missing table)."""
        if not self._run("health check", self._client.command, f"EXISTS TABLE {self._table}"):
            raise Unavailable("clickhouse", f"table {self._table} does not exist")

    def write(self, rows: Sequence[AnalyticsRow]) -> None:
        if not rows:
            return
        # Column-oriented, timestamps as integer microseconds: the least Python work per
        # value the driver takes. The loader hands its rows over as columns already.
        if isinstance(rows, AnalyticsColumns):
            ids, created_at, event_time, source, type_, payload, object_key = rows.columns
        else:
            ids, created_at, event_time = [r.id for r in rows], [r.created_at for r in rows], [r.event_time for r in rows]
            source, type_, payload = [r.source for r in rows], [r.type for r in rows], [r.payload for r in rows]
            object_key = [r.object_key for r in rows]
        created, event = _micros(created_at), _micros(event_time)
        if not (_in_range(created) and _in_range(event)):
            for row in rows:  # nothing is written when one row cannot be, like a refused INSERT
                problem = _unstorable(row)
                if problem is not None:
                    raise Refused("clickhouse", f"row {row.id!r}: {problem}")
        self._insert([ids, created, event, source, type_, payload, object_key])

    def _insert(self, columns: list[list[Any]]) -> None:
        """One column-oriented INSERT. The table's column types are described once (the
        driver would describe the table before every insert) and described again after
        any failed insert, in case the table changed."""
        types = self._insert_types
        if types is None:
            context = self._run("insert", self._client.create_insert_context, self._table, _COLUMNS,
                                column_oriented=True)
            types = context.column_types
        try:
            self._run("insert", self._client.insert, self._table, columns, column_names=_COLUMNS,
                      column_types=types, column_oriented=True)
        except BaseException:
            self._insert_types = None
            raise
        self._insert_types = types

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
