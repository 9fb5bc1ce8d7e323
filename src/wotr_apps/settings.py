"""Process settings: every environment variable wotr reads, declared once and read once.

`VARIABLES` is the one declaration: each `Variable` has its name, its default (the text
used when it is unset), the parser that turns the text into a value, a line of help and
the settings field it fills (`port`, `s3.endpoint`, ...). `Settings.from_env` reads them
all at start-up; a value its parser refuses stops the process with a `ConfigError` that
names the variable. Adapters receive plain values (the connection types of
`wotr_adapters.connections`) and never see a variable name. The README's Configuration
table is checked against this declaration (tests/unit/test_settings.py).

Profiles choose the adapters: `memory` (all in-process, nothing durable), `embedded`
(the default: files, SQLite and the in-process ClickHouse engine under WOTR_DATA_DIR)
and `local` (MinIO/S3, Kafka, PostgreSQL and ClickHouse servers, seed variable names).
The servers' variables are read on the `local` profile only (ClickHouse's on every
profile but `memory`); elsewhere their defaults stand.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wotr_adapters.connections import ClickHouseConnection, KafkaConnection, PostgresConnection, S3Connection
from wotr_domain.errors import ConfigError

__all__ = ["PROFILES", "VARIABLES", "Settings", "Variable", "variable"]

PROFILES = ("memory", "embedded", "local")

STACK_HOME = "~/.local/share/wotr-stack"  # the native stack's home (wotr_testing.stack) unless WOTR_STACK_HOME


# -- parsers: the variable's text -> its value; ValueError(problem) when it is not acceptable


def _profile(raw: str) -> str:
    value = raw.strip().lower()
    if value not in PROFILES:
        raise ValueError(f"must be one of {', '.join(PROFILES)}, got {value!r}")
    return value


def _nice(raw: str) -> int:
    value = _integer(0)(raw)
    if value > 19:
        raise ValueError(f"must be at most 19, got {value}")
    return value


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {raw.strip()!r}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {text!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _stripped(raw: str) -> str:
    return raw.strip()


def _path(raw: str) -> Path:
    return Path(raw.strip()).expanduser().resolve()


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must be set to a non-empty value")
    return value


def _verbatim(raw: str) -> str:
    return raw


def _endpoint(raw: str) -> str:
    value = _text(raw)
    if "://" in value or "/" in value:
        raise ValueError(f"must be host:port without scheme or path, got {value!r}")
    return value


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"must be between 1 and 65535, got {port}")
    return port


def _partitions(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"must be a positive integer, got {raw.strip()!r}") from None
    if value < 1:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _sql_identifier(raw: str) -> str:
    value = _text(raw)
    if not value.replace("_", "a").isalnum() or value[0].isdigit():
        raise ValueError(f"must be a plain SQL identifier, got {value!r}")
    return value


_ASCII_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _ascii_identifier(raw: str) -> str:
    value = _text(raw)
    if not _ASCII_IDENTIFIER.fullmatch(value):
        raise ValueError(f"must be a plain identifier, got {value!r}")
    return value


def _cluster(raw: str) -> str:
    """A cluster name of the server's `remote_servers`, or blank (one node)."""
    value = raw.strip()
    if value and not _ASCII_IDENTIFIER.fullmatch(value):
        raise ValueError(f"must be a plain identifier (a cluster of remote_servers) or blank, got {value!r}")
    return value


def _dsn(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("chdb://", "clickhouse://", "http://", "https://")):
        raise ValueError(f"must start with chdb://, clickhouse://, http:// or https://, got {value!r}")
    return value


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s,]+")


def _origins(raw: str) -> tuple[str, ...]:
    """Comma-separated origins (`scheme://host[:port]`, `*` in a part matches anything; `*`
    alone: every origin); blank: none."""
    origins = tuple(part.strip() for part in raw.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin.lower()):
            raise ValueError(f"must be origins like https://app.example.com (no path), got {origin!r}")
    return origins


_SPARK_MASTER = re.compile(
    r"local(?:\[(?:\*|[1-9]\d*)(?:,[1-9]\d*)?\])?"  # local, local[2], local[*], local[2,3] (retries)
    r"|spark://[^\s/,:]+:\d+(?:,[^\s/,:]+:\d+)*"  # a standalone master (or several, with ZooKeeper)
    r"|yarn|k8s://\S+"
)


def _spark_master(raw: str) -> str:
    value = _text(raw)
    if not _SPARK_MASTER.fullmatch(value):
        raise ValueError(f"must be local[N], local[*], spark://host:port, yarn or k8s://<api server>, got {value!r}")
    return value


_HOST_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # a host name or an IPv4 address


def _host(raw: str) -> str:
    value = _text(raw)
    try:
        ok = ipaddress.ip_address(value).version == 6 if ":" in value else bool(_HOST_NAME.fullmatch(value))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"must be a host name or an IP address (no scheme or port), got {value!r}")
    return value


_SPARK_SIZE = re.compile(r"[1-9]\d*[kmgtp]?b?", re.IGNORECASE)


def _spark_size(raw: str) -> str:
    """A JVM memory size as Spark reads it: 512m, 2g, 1024 (MiB)."""
    value = raw.strip()
    if not _SPARK_SIZE.fullmatch(value):
        raise ValueError(f"must be a size like 512m or 2g, got {value!r}")
    return value.lower()


_SPARK_PAIR = re.compile(r"(spark\.[A-Za-z0-9_.\-]+)=(.*)", re.S)
_SPARK_PAIR_START = re.compile(r",(?=\s*spark\.[A-Za-z0-9_.\-]+=)")


def _spark_conf(raw: str) -> tuple[tuple[str, str], ...]:
    """`spark.key=value,spark.key=value`; a comma starts a new pair only before `spark.<key>=`,
    so a value may hold commas (`spark.jars=a.jar,b.jar`). Blank: none."""
    if not raw.strip():
        return ()
    pairs: dict[str, str] = {}
    for piece in _SPARK_PAIR_START.split(raw.strip()):
        m = _SPARK_PAIR.fullmatch(piece.strip())
        if m is None:
            raise ValueError(f"must be spark.<key>=<value> pairs separated by commas, got {piece.strip()!r}")
        key, value = m[1], m[2].strip()
        if not value:
            raise ValueError(f"must give every key a value, {key} has none")
        if key in pairs:
            raise ValueError(f"must name each key once, {key} is given twice")
        pairs[key] = value
    return tuple(pairs.items())


# -- the declaration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: its name, default text, parser, help, and the field it fills.

    `target` is a `Settings` field (`port`) or a field of one of its connections
    (`s3.endpoint`). `default` is the text used when the variable is unset, or None when
    the value is derived (see `Settings.from_env`). A variable set to blank text counts as
    unset unless `blank_is_unset` is false (the servers' names: blank there is a mistake).
    """

    name: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    target: str
    blank_is_unset: bool = True

    @property
    def section(self) -> str:
        """`""` for a plain setting, else the connection it belongs to (`s3`, `kafka`, ...)."""
        return self.target.rpartition(".")[0]

    def given(self, env: Mapping[str, str] | None = None) -> bool:
        raw = (os.environ if env is None else env).get(self.name)
        return raw is not None and (raw.strip() != "" or not self.blank_is_unset)

    def read(self, env: Mapping[str, str] | None = None) -> Any:
        """The value `env` (default: the process environment) gives; ConfigError naming it if invalid."""
        raw = (os.environ if env is None else env).get(self.name)
        if raw is None or (self.blank_is_unset and raw.strip() == ""):
            if self.default is None:
                return None
            raw = self.default
        try:
            return self.parse(raw)
        except ValueError as e:
            raise ConfigError(self.name, str(e)) from None


def _default(cls: type, name: str) -> str:
    """The text form of a connection field's default: the value types keep the defaults."""
    value = getattr(cls(), name)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _server(cls: type, section: str, name: str, attr: str, parse: Callable[[str], Any], help: str) -> Variable:
    return Variable(name, _default(cls, attr), parse, help, f"{section}.{attr}", blank_is_unset=False)


VARIABLES: tuple[Variable, ...] = (
    Variable("WOTR_PROFILE", "embedded", _profile, "memory, embedded or local: which adapters run", "profile"),
    Variable("WOTR_DATA_DIR", ".wotr", _path, "the embedded profile's data directory", "data_dir"),
    Variable("WOTR_HOST", "127.0.0.1", _stripped, "API listen address", "host"),
    Variable("WOTR_PORT", "8000", _port, "API listen port", "port"),
    Variable("WOTR_CORS_ORIGINS", "", _origins, "origins browsers may call the API from (blank: CORS off)",
             "cors_origins"),
    Variable("WOTR_MAX_BODY_BYTES", str(1024 * 1024), _integer(64), "size limit of one event", "max_body_bytes"),
    Variable("WOTR_MAX_BATCH_BYTES", str(16 * 1024 * 1024), _integer(64), "size limit of one batch",
             "max_batch_bytes"),
    Variable("WOTR_MAX_BATCH_EVENTS", "10000", _integer(1), "events per batch", "max_batch_events"),
    Variable("WOTR_MAX_HEADERS", "100", _integer(8), "header fields per request", "max_headers"),
    Variable("WOTR_MAX_HEADER_BYTES", str(64 * 1024), _integer(1024), "bytes of request target and headers",
             "max_header_bytes"),
    Variable("WOTR_HEADER_READ_TIMEOUT_SECONDS", "10", _number(0.1), "from a request's first byte to its headers",
             "header_read_timeout_seconds"),
    Variable("WOTR_BODY_READ_TIMEOUT_SECONDS", "10", _number(0.1), "longest a request body may send nothing",
             "body_read_timeout_seconds"),
    Variable("WOTR_KEEP_ALIVE_SECONDS", "75", _number(1.0), "how long an idle client connection stays open",
             "keep_alive_seconds"),
    Variable("WOTR_ACCESS_LOG", "false", _flag, "log one line per HTTP request (costs ~60 µs each)", "access_log"),
    Variable("WOTR_SQL_PORT", "8123", _integer(0), "read-only SQL endpoint of the process owning the analytics engine "
             "(0: off)", "sql_port"),
    Variable("WOTR_REQUIRE_WRITE_KEY", "false", _flag, "ingest endpoints answer 401 without a valid write key",
             "require_write_key"),
    Variable("WOTR_WRITE_KEY_CACHE_SECONDS", "2", _number(0.0),
             "how long the API trusts a looked-up write key (bound on revocation delay)", "write_key_cache_seconds"),
    Variable("WOTR_RATE_LIMIT_PER_SECOND", "0", _number(0.0), "ingest requests per second per key or address (0: off)",
             "rate_limit_per_second"),
    Variable("WOTR_RATE_LIMIT_BURST", "0", _integer(0), "requests a client may send at once (0: the rate, at least 1)",
             "rate_limit_burst"),
    Variable("WOTR_INGEST_QUEUE_MAX", "2000", _integer(1), "events waiting for a write before POST /ingest sheds (503)",
             "ingest_queue_max"),
    Variable("WOTR_INGEST_FLUSHES", "2", _integer(1),
             "writes of POST /ingest in progress at once (more hide a distant store's latency; fewer spend less CPU per event)",
             "ingest_flushes"),
    Variable("WOTR_INGEST_IN_FLIGHT_MAX", "75", _integer(0),
             "single-event requests being served at once before POST /ingest sheds (503; 0: no bound)",
             "ingest_in_flight_max"),
    Variable("WOTR_INGEST_MAX_WAIT_MS", "40", _number(1.0),
             "write latency target: POST /ingest sheds (503) while events stay unanswered longer (for 50 ms running, or at once within 1 s of a shed)", "ingest_max_wait_ms"),
    Variable("WOTR_BATCHES_IN_FLIGHT_MAX", "8", _integer(1), "batches in flight before POST /ingest/batch sheds (503)",
             "batches_in_flight_max"),
    Variable("WOTR_CONSUMER_BATCH_SIZE", "5000", _integer(1), "consumer batch size", "consumer_batch_size"),
    Variable("WOTR_CONSUMER_BATCH_SECONDS", "0.1", _number(0.001), "consumer batch time", "consumer_batch_seconds"),
    Variable("WOTR_CONSUMER_NICE", "10", _nice,
             "CPU priority of `wotr consume` (nice, 0-19): below the API's where they share cores", "consumer_nice"),
    Variable("WOTR_RELAY_GRACE_SECONDS", "10", _number(0.0), "age before the relay publishes an event",
             "relay_grace_seconds"),
    Variable("WOTR_RELAY_INTERVAL_SECONDS", "2", _number(0.01), "outbox relay polling interval",
             "relay_interval_seconds"),
    Variable("WOTR_METRICS_PORT", "0", _integer(0), "/metrics port of consume and relay (0: per command)",
             "metrics_port"),
    Variable("WOTR_METRICS_HOST", "127.0.0.1", _stripped, "/metrics address of consume and relay", "metrics_host"),
    Variable("WOTR_STACK_HOME", STACK_HOME, _path, "the native stack's home (wotr stack)", "stack_home"),
    Variable("WOTR_CACHE_DIR", None, _path, "downloads kept across runs (default <WOTR_STACK_HOME>/cache)",
             "cache_dir"),
    Variable("WOTR_SPARK_MASTER", "local[2]", _spark_master, "the ETL's Spark master: local[N] or a cluster "
             "(spark://host:port)", "spark_master"),
    Variable("WOTR_SPARK_DRIVER_HOST", "127.0.0.1", _host, "address the ETL's executors reach its driver at "
             "(bound on all interfaces unless loopback)", "spark_driver_host"),
    Variable("WOTR_SPARK_EXECUTOR_MEMORY", None, _spark_size, "memory of each executor on a cluster (512m, 2g; "
             "default Spark's, 1g)", "spark_executor_memory"),
    Variable("WOTR_SPARK_EXECUTOR_CORES", None, _integer(1), "cores of each executor on a cluster (default: all of "
             "a worker's)", "spark_executor_cores"),
    Variable("WOTR_SPARK_SHIP_JARS", "false", _flag, "on a cluster, the driver ships the s3a jars to every executor "
             "(else they must be at the same path on every worker)", "spark_ship_jars"),
    Variable("WOTR_SPARK_CONF", "", _spark_conf, "extra Spark settings for the ETL, spark.key=value,... "
             "(applied last)", "spark_conf"),
    _server(S3Connection, "s3", "MINIO_ENDPOINT", "endpoint", _endpoint, "S3 endpoint, host:port"),
    _server(S3Connection, "s3", "MINIO_ACCESS_KEY", "access_key", _text, "S3 access key"),
    _server(S3Connection, "s3", "MINIO_SECRET_KEY", "secret_key", _text, "S3 secret key"),
    _server(S3Connection, "s3", "MINIO_BUCKET", "bucket", _text, "bucket of the raw archive"),
    Variable("MINIO_SECURE", _default(S3Connection, "secure"), _flag, "S3 over TLS", "s3.secure"),
    _server(S3Connection, "s3", "MINIO_REGION", "region", _text, "S3 region"),
    _server(KafkaConnection, "kafka", "KAFKA_BOOTSTRAP", "bootstrap", _text, "Kafka bootstrap servers"),
    _server(KafkaConnection, "kafka", "KAFKA_TOPIC", "topic", _text, "topic of the events (dead letters: <topic>.dlq)"),
    Variable("KAFKA_PARTITIONS", _default(KafkaConnection, "partitions"), _partitions, "partitions of a new topic",
             "kafka.partitions"),
    _server(KafkaConnection, "kafka", "KAFKA_GROUP", "group", _text, "consumer group"),
    Variable("KAFKA_REPLICATION_FACTOR", _default(KafkaConnection, "replication_factor"), _partitions,
             "replicas of each partition of a new topic (production: 3)", "kafka.replication_factor"),
    Variable("KAFKA_MIN_INSYNC_REPLICAS", _default(KafkaConnection, "min_insync_replicas"), _partitions,
             "min.insync.replicas of a new topic: replicas that must have a write (production: 2)",
             "kafka.min_insync_replicas"),
    _server(PostgresConnection, "postgres", "POSTGRES_HOST", "host", _text, "PostgreSQL host"),
    Variable("POSTGRES_PORT", _default(PostgresConnection, "port"), _port, "PostgreSQL port", "postgres.port"),
    _server(PostgresConnection, "postgres", "POSTGRES_USER", "user", _text, "PostgreSQL role"),
    _server(PostgresConnection, "postgres", "POSTGRES_PASSWORD", "password", _text, "PostgreSQL password"),
    _server(PostgresConnection, "postgres", "POSTGRES_DB", "dbname", _text, "PostgreSQL database"),
    _server(PostgresConnection, "postgres", "POSTGRES_SCHEMA", "schema", _sql_identifier, "schema of the metadata"),
    Variable("CLICKHOUSE_DSN", None, _dsn, "ClickHouse DSN; wins over CLICKHOUSE_HOST (chdb:// runs in-process)",
             "clickhouse.dsn"),
    _server(ClickHouseConnection, "clickhouse", "CLICKHOUSE_HOST", "host", _text, "ClickHouse server host"),
    Variable("CLICKHOUSE_PORT", _default(ClickHouseConnection, "port"), _port, "ClickHouse HTTP port",
             "clickhouse.port"),
    _server(ClickHouseConnection, "clickhouse", "CLICKHOUSE_USER", "user", _text, "ClickHouse user"),
    Variable("CLICKHOUSE_PASSWORD", _default(ClickHouseConnection, "password"), _verbatim, "ClickHouse password",
             "clickhouse.password", blank_is_unset=False),
    _server(ClickHouseConnection, "clickhouse", "CLICKHOUSE_DB", "database", _ascii_identifier,
            "ClickHouse database"),
    Variable("CLICKHOUSE_CLUSTER", _default(ClickHouseConnection, "cluster"), _cluster,
             "ClickHouse cluster: replicated, sharded tables ON CLUSTER it (blank: one node)", "clickhouse.cluster"),
)

_BY_NAME = {v.name: v for v in VARIABLES}

# The profiles on which a connection's variables are read; elsewhere its defaults stand.
_SECTION_PROFILES = {
    "s3": ("local",),
    "kafka": ("local",),
    "postgres": ("local",),
    "clickhouse": ("embedded", "local"),
}
_CONNECTIONS: dict[str, type] = {
    "s3": S3Connection,
    "kafka": KafkaConnection,
    "postgres": PostgresConnection,
    "clickhouse": ClickHouseConnection,
}


def variable(name: str) -> Variable:
    """The declared variable `name` (KeyError for a name wotr does not read)."""
    return _BY_NAME[name]


def _default_stack_home() -> Path:
    return _path(STACK_HOME)


@dataclass(frozen=True, slots=True)
class Settings:
    profile: str = "embedded"
    data_dir: Path = Path(".wotr")
    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    max_batch_bytes: int = 16 * 1024 * 1024
    max_batch_events: int = 10_000
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_read_timeout_seconds: float = 10.0
    body_read_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 75.0
    access_log: bool = False
    sql_port: int = 8123
    require_write_key: bool = False
    write_key_cache_seconds: float = 2.0
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0
    ingest_queue_max: int = 2000
    ingest_flushes: int = 2
    ingest_in_flight_max: int = 75
    ingest_max_wait_ms: float = 40.0
    batches_in_flight_max: int = 8
    consumer_batch_size: int = 5_000
    consumer_batch_seconds: float = 0.1
    consumer_nice: int = 10
    relay_grace_seconds: float = 10.0
    relay_interval_seconds: float = 2.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    stack_home: Path = field(default_factory=_default_stack_home)
    cache_dir: Path = field(default_factory=lambda: _default_stack_home() / "cache")
    spark_master: str = "local[2]"
    spark_driver_host: str = "127.0.0.1"
    spark_executor_memory: str | None = None
    spark_executor_cores: int | None = None
    spark_ship_jars: bool = False
    spark_conf: tuple[tuple[str, str], ...] = ()
    s3: S3Connection = field(default_factory=S3Connection)
    kafka: KafkaConnection = field(default_factory=KafkaConnection)
    postgres: PostgresConnection = field(default_factory=PostgresConnection)
    clickhouse: ClickHouseConnection = field(default_factory=ClickHouseConnection)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, profile: str | None = None) -> Settings:
        """Read every declared variable from `env` (default: the process environment).

        `profile` overrides `WOTR_PROFILE`; e.g. `Settings.from_env(env, profile="local").s3`
        is the S3 connection `env` describes, whatever profile the process runs.
        """
        env = os.environ if env is None else env
        chosen = variable("WOTR_PROFILE").read(env) if profile is None else _profile(profile)
        values: dict[str, dict[str, Any]] = {"": {}, **{section: {} for section in _CONNECTIONS}}
        for var in VARIABLES:
            section, _, attr = var.target.rpartition(".")
            if var.name == "WOTR_PROFILE" or chosen not in _SECTION_PROFILES.get(section, PROFILES):
                continue
            values[section][attr] = var.read(env)
        plain = values[""]
        plain["profile"] = chosen
        if plain["cache_dir"] is None:
            plain["cache_dir"] = plain["stack_home"] / "cache"
        clickhouse = values["clickhouse"]
        if clickhouse and clickhouse["dsn"] is None and not variable("CLICKHOUSE_HOST").given(env):
            clickhouse["dsn"] = f"chdb://{plain['data_dir'] / 'clickhouse'}"
        if clickhouse and clickhouse["cluster"] and (clickhouse["dsn"] or "").startswith("chdb://"):
            raise ConfigError("CLICKHOUSE_CLUSTER", "needs ClickHouse servers (CLICKHOUSE_HOST or a server DSN), "
                              "not the in-process engine (chdb://)")
        kafka = values["kafka"]
        if kafka and kafka["min_insync_replicas"] > kafka["replication_factor"]:
            raise ConfigError("KAFKA_MIN_INSYNC_REPLICAS", f"must be at most KAFKA_REPLICATION_FACTOR "
                              f"({kafka['replication_factor']}), got {kafka['min_insync_replicas']}")
        return cls(**plain, **{section: _CONNECTIONS[section](**values[section]) for section in _CONNECTIONS})

    @property
    def topic(self) -> str:
        return self.kafka.topic

    @property
    def bucket(self) -> str:
        return self.s3.bucket

