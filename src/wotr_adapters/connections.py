"""Connection settings for the real services, read from the seed's environment variables.

Each settings class parses its variables once and fails with a `ConfigError` that names
the offending variable, so a mistyped port stops the process at start-up instead of
surfacing later as a connection error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote

from wotr_domain.errors import ConfigError

__all__ = [
    "ClickHouseConnection",
    "KafkaConnection",
    "PostgresConnection",
    "S3Connection",
]


def _text(env: Mapping[str, str], name: str, default: str | None) -> str:
    value = env.get(name, default)
    if value is None or value.strip() == "":
        raise ConfigError(name, "must be set to a non-empty value")
    return value.strip()


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(name, f"must be between 1 and 65535, got {port}")
    return port


def _identifier(env: Mapping[str, str], name: str, default: str) -> str:
    value = _text(env, name, default)
    if not value.replace("_", "a").isalnum() or value[0].isdigit():
        raise ConfigError(name, f"must be a plain SQL identifier, got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class S3Connection:
    """An S3-compatible endpoint (MinIO or any S3 server): `MINIO_*` variables."""

    endpoint: str = "127.0.0.1:9000"
    access_key: str = "wotradmin"
    secret_key: str = "wotradmin-secret"
    bucket: str = "raw-data"
    secure: bool = False
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Connection:
        env = os.environ if env is None else env
        d = cls()
        endpoint = _text(env, "MINIO_ENDPOINT", d.endpoint)
        if "://" in endpoint or "/" in endpoint:
            raise ConfigError("MINIO_ENDPOINT", f"must be host:port without scheme or path, got {endpoint!r}")
        return cls(
            endpoint=endpoint,
            access_key=_text(env, "MINIO_ACCESS_KEY", d.access_key),
            secret_key=_text(env, "MINIO_SECRET_KEY", d.secret_key),
            bucket=_text(env, "MINIO_BUCKET", d.bucket),
            secure=_flag(env, "MINIO_SECURE", d.secure),
            region=_text(env, "MINIO_REGION", d.region),
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """A Kafka-protocol broker (Kafka or Redpanda): `KAFKA_*` variables."""

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "ingest-events"
    partitions: int = 3
    group: str = "wotr-analytics"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlq"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaConnection:
        env = os.environ if env is None else env
        d = cls()
        raw_partitions = env.get("KAFKA_PARTITIONS", "").strip() or str(d.partitions)
        try:
            partitions = int(raw_partitions)
        except ValueError:
            raise ConfigError("KAFKA_PARTITIONS", f"must be a positive integer, got {raw_partitions!r}") from None
        if partitions < 1:
            raise ConfigError("KAFKA_PARTITIONS", f"must be a positive integer, got {partitions}")
        return cls(
            bootstrap=_text(env, "KAFKA_BOOTSTRAP", d.bootstrap),
            topic=_text(env, "KAFKA_TOPIC", d.topic),
            partitions=partitions,
            group=_text(env, "KAFKA_GROUP", d.group),
        )


@dataclass(frozen=True, slots=True)
class PostgresConnection:
    """A PostgreSQL server: `POSTGRES_HOST/PORT/USER/PASSWORD/DB` (and `POSTGRES_SCHEMA`)."""

    host: str = "127.0.0.1"
    port: int = 5433
    user: str = "wotr"
    password: str = "wotr"
    dbname: str = "wotr"
    schema: str = "public"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PostgresConnection:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            host=_text(env, "POSTGRES_HOST", d.host),
            port=_port(env, "POSTGRES_PORT", d.port),
            user=_text(env, "POSTGRES_USER", d.user),
            password=_text(env, "POSTGRES_PASSWORD", d.password),
            dbname=_text(env, "POSTGRES_DB", d.dbname),
            schema=_identifier(env, "POSTGRES_SCHEMA", d.schema),
        )

    @property
    def conninfo(self) -> str:
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.dbname, safe='')}"
        )


@dataclass(frozen=True, slots=True)
class ClickHouseConnection:
    """A ClickHouse server over HTTP, or the in-process engine through a `chdb://` DSN.

    `CLICKHOUSE_DSN` wins when set (e.g. `chdb:///var/lib/wotr/clickhouse`); otherwise
    `CLICKHOUSE_HOST/PORT/USER/PASSWORD` name a server. `CLICKHOUSE_DB` names the database.
    """

    dsn: str | None = None
    host: str = "127.0.0.1"
    port: int = 8123
    user: str = "default"
    password: str = ""
    database: str = "wotr"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, default_dsn: str | None = None) -> ClickHouseConnection:
        env = os.environ if env is None else env
        d = cls()
        dsn = (env.get("CLICKHOUSE_DSN") or "").strip() or None
        if dsn is None and not (env.get("CLICKHOUSE_HOST") or "").strip():
            dsn = default_dsn
        if dsn is not None and not dsn.startswith(("chdb://", "clickhouse://", "http://", "https://")):
            raise ConfigError("CLICKHOUSE_DSN", f"must start with chdb://, clickhouse://, http:// or https://, got {dsn!r}")
        return cls(
            dsn=dsn,
            host=_text(env, "CLICKHOUSE_HOST", d.host),
            port=_port(env, "CLICKHOUSE_PORT", d.port),
            user=_text(env, "CLICKHOUSE_USER", d.user),
            password=env.get("CLICKHOUSE_PASSWORD", d.password),
            database=_text(env, "CLICKHOUSE_DB", d.database),
        )

    @property
    def embedded(self) -> bool:
        return self.dsn is not None and self.dsn.startswith("chdb://")
