"""Process settings, read once from the environment and validated at start-up.

Profiles choose the adapters: `memory` (all in-process, nothing durable), `embedded`
(the default: files, SQLite and the in-process ClickHouse engine under WOTR_DATA_DIR)
and `local` (MinIO/S3, Kafka, PostgreSQL and ClickHouse servers, seed variable names).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wotr_adapters.connections import ClickHouseConnection, KafkaConnection, PostgresConnection, S3Connection
from wotr_domain.errors import ConfigError

__all__ = ["PROFILES", "Settings"]

PROFILES = ("memory", "embedded", "local")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    profile: str = "embedded"
    data_dir: Path = Path(".wotr")
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1024 * 1024
    max_batch_bytes: int = 16 * 1024 * 1024
    max_batch_events: int = 10_000
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_read_timeout_seconds: float = 10.0
    body_read_timeout_seconds: float = 10.0
    consumer_batch_size: int = 5_000
    consumer_batch_seconds: float = 0.2
    relay_grace_seconds: float = 10.0
    relay_interval_seconds: float = 2.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    s3: S3Connection = field(default_factory=S3Connection)
    kafka: KafkaConnection = field(default_factory=KafkaConnection)
    postgres: PostgresConnection = field(default_factory=PostgresConnection)
    clickhouse: ClickHouseConnection = field(default_factory=ClickHouseConnection)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        profile = (env.get("WOTR_PROFILE") or "embedded").strip().lower()
        if profile not in PROFILES:
            raise ConfigError("WOTR_PROFILE", f"must be one of {', '.join(PROFILES)}, got {profile!r}")
        data_dir = Path((env.get("WOTR_DATA_DIR") or ".wotr").strip()).expanduser().resolve()
        host = (env.get("WOTR_HOST") or "127.0.0.1").strip()
        kafka = KafkaConnection.from_env(env) if profile == "local" else KafkaConnection()
        return cls(
            profile=profile,
            data_dir=data_dir,
            host=host,
            port=_int(env, "WOTR_PORT", 8000, minimum=0),
            max_body_bytes=_int(env, "WOTR_MAX_BODY_BYTES", 1024 * 1024, minimum=64),
            max_batch_bytes=_int(env, "WOTR_MAX_BATCH_BYTES", 16 * 1024 * 1024, minimum=64),
            max_batch_events=_int(env, "WOTR_MAX_BATCH_EVENTS", 10_000),
            max_headers=_int(env, "WOTR_MAX_HEADERS", 100, minimum=8),
            max_header_bytes=_int(env, "WOTR_MAX_HEADER_BYTES", 64 * 1024, minimum=1024),
            header_read_timeout_seconds=_float(env, "WOTR_HEADER_READ_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            body_read_timeout_seconds=_float(env, "WOTR_BODY_READ_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            consumer_batch_size=_int(env, "WOTR_CONSUMER_BATCH_SIZE", 5_000),
            consumer_batch_seconds=_float(env, "WOTR_CONSUMER_BATCH_SECONDS", 0.2, minimum=0.001),
            relay_grace_seconds=_float(env, "WOTR_RELAY_GRACE_SECONDS", 10.0),
            relay_interval_seconds=_float(env, "WOTR_RELAY_INTERVAL_SECONDS", 2.0, minimum=0.01),
            metrics_port=_int(env, "WOTR_METRICS_PORT", 0, minimum=0),
            metrics_host=(env.get("WOTR_METRICS_HOST") or "127.0.0.1").strip(),
            s3=S3Connection.from_env(env) if profile == "local" else S3Connection(),
            kafka=kafka,
            postgres=PostgresConnection.from_env(env) if profile == "local" else PostgresConnection(),
            clickhouse=ClickHouseConnection.from_env(env, default_dsn=f"chdb://{data_dir / 'clickhouse'}")
            if profile != "memory"
            else ClickHouseConnection(),
        )

    @property
    def topic(self) -> str:
        return self.kafka.topic

    @property
    def bucket(self) -> str:
        return self.s3.bucket
