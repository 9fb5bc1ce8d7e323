"""How to reach the real services: plain frozen values with the reference defaults.

The adapters take these and read no configuration of their own. The process settings
(`wotr_apps.settings`) fill them from configuration and validate it there, so a mistyped
port stops the process at start-up with a message naming what to fix. Embedding code
builds them directly: `S3Connection(endpoint="minio:9000", bucket="archive")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "ClickHouseConnection",
    "KafkaConnection",
    "PostgresConnection",
    "S3Connection",
]


@dataclass(frozen=True, slots=True)
class S3Connection:
    """An S3-compatible endpoint (MinIO or any S3 server), `host:port` without scheme."""

    endpoint: str = "127.0.0.1:9000"
    access_key: str = "wotradmin"
    secret_key: str = "wotradmin-secret"
    bucket: str = "raw-data"
    secure: bool = False
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """A Kafka-protocol broker (Kafka or Redpanda), the events' topic and the consumer group."""

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "ingest-events"
    partitions: int = 3
    group: str = "wotr-analytics"
    # Applied when wotr creates the topics (the events' and the dead letters'); an existing
    # topic keeps its own. Production: 3 and 2, with the producer's acks=all.
    replication_factor: int = 1
    min_insync_replicas: int = 1

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlq"


@dataclass(frozen=True, slots=True)
class PostgresConnection:
    """A PostgreSQL server, and the schema that holds wotr's tables."""

    host: str = "127.0.0.1"
    port: int = 5433
    user: str = "wotr"
    password: str = "wotr"
    dbname: str = "wotr"
    schema: str = "public"

    @property
    def conninfo(self) -> str:
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.dbname, safe='')}"
        )


@dataclass(frozen=True, slots=True)
class ClickHouseConnection:
    """A ClickHouse server over HTTP, or the in-process engine through a `chdb://` DSN.

    A `dsn` wins when set (e.g. `chdb:///var/lib/wotr/clickhouse`); otherwise `host`,
    `port`, `user` and `password` name a server. `database` holds wotr's table; with a
    `cluster`, the table is created on every node of that cluster (see `clickhouse._ddl`).
    """

    dsn: str | None = None
    host: str = "127.0.0.1"
    port: int = 8123
    user: str = "default"
    password: str = ""
    database: str = "wotr"
    cluster: str = ""  # a server cluster's name: replicated, sharded DDL `ON CLUSTER` it; blank: one node

    @property
    def embedded(self) -> bool:
        return self.dsn is not None and self.dsn.startswith("chdb://")
