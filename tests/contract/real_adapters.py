"""Factories of the real-service adapters for the contract suites.

Each adapter gets its own bucket, topic pair or schema, removed again when the test
ends, so tests never see each other's data and the services do not fill up. The
"down" variants point the same adapter code at 127.0.0.1:1, where nothing listens.
"""

from __future__ import annotations

import contextlib
import uuid
from functools import partial
from pathlib import Path

import pytest

from wotr_adapters.connections import KafkaConnection, PostgresConnection, S3Connection
from wotr_adapters.kafka import KafkaEventBus, kafka_bus
from wotr_adapters.minio import MinioObjectStore, minio_client
from wotr_adapters.postgres import PostgresMetadataRepo, postgres_pool

NOWHERE = "127.0.0.1:1"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- S3 ----------------------------------------------------------------------------------


def minio_store(request: pytest.FixtureRequest, tmp: Path) -> MinioObjectStore:
    client = minio_client(request.getfixturevalue("s3_connection"))
    store = MinioObjectStore(client, unique("wotr-contract-"))
    request.addfinalizer(partial(drop_bucket, client, store.bucket))
    return store


def drop_bucket(client, bucket: str) -> None:
    from minio.deleteobjects import DeleteObject

    with contextlib.suppress(Exception):
        doomed = (DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True))
        list(client.remove_objects(bucket, doomed))  # the iterator performs the deletes
        client.remove_bucket(bucket)


def down_minio_store(request: pytest.FixtureRequest, tmp: Path) -> MinioObjectStore:
    return MinioObjectStore(minio_client(S3Connection(endpoint=NOWHERE)), "raw-data")


# -- Kafka -------------------------------------------------------------------------------


def kafka_event_bus(request: pytest.FixtureRequest, tmp: Path) -> KafkaEventBus:
    conn: KafkaConnection = request.getfixturevalue("kafka_connection")
    bus = KafkaEventBus(conn.bootstrap, unique("wotr-contract-"), partitions=conn.partitions)
    request.addfinalizer(partial(drop_topics, conn.bootstrap, [bus.topic, bus.dead_letter_topic]))
    return bus


def drop_topics(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    with contextlib.suppress(Exception):
        for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics).values():
            with contextlib.suppress(Exception):
                future.result(timeout=10)


def down_kafka_bus(request: pytest.FixtureRequest, tmp: Path) -> KafkaEventBus:
    return kafka_bus(KafkaConnection(bootstrap=NOWHERE), request_timeout=2.0, delivery_timeout=3.0)


# -- PostgreSQL --------------------------------------------------------------------------


def postgres_repo(request: pytest.FixtureRequest, tmp: Path) -> PostgresMetadataRepo:
    conn: PostgresConnection = request.getfixturevalue("postgres_connection")
    repo = PostgresMetadataRepo(partial(postgres_pool, conn, max_size=4), schema=unique("contract_"))
    request.addfinalizer(partial(drop_schema, conn, repo.schema))
    return repo


def drop_schema(conn: PostgresConnection, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with contextlib.suppress(psycopg.Error), psycopg.connect(conn.conninfo, autocommit=True, connect_timeout=5) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def down_postgres_repo(request: pytest.FixtureRequest, tmp: Path) -> PostgresMetadataRepo:
    host, port = NOWHERE.split(":")
    return PostgresMetadataRepo(partial(postgres_pool, PostgresConnection(host=host, port=int(port)), timeout=2.0), start_timeout=2.0)
