"""The composition root: the only place that builds adapters and wires services.

Each port is a `Selector` keyed by the profile, wrapped in a `Resource` that starts the
adapter on first use and closes it at `shutdown_resources()`. Drivers are imported by
the builder functions below, so a profile never imports another profile's drivers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers

from wotr_adapters.clickhouse import ClickHouseAnalyticsSink, clickhouse_client
from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryAnalyticsSink, InMemoryEventBus, InMemoryMetadataRepo, InMemoryObjectStore
from wotr_adapters.sqlite_bus import SqliteEventBus
from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
from wotr_domain.services import AnalyticsLoader, IngestService, OutboxRelay, Replay

from .settings import Settings

__all__ = ["Container", "build_container"]


def _started(adapter: Any) -> Iterator[Any]:
    adapter.start()
    try:
        yield adapter
    finally:
        adapter.close()


def _clickhouse_client(settings: Settings) -> Iterator[Any]:
    client = clickhouse_client(settings.clickhouse)
    try:
        yield client
    finally:
        client.close()


def _minio_store(settings: Settings) -> Any:
    from wotr_adapters.minio import MinioObjectStore, minio_client

    return MinioObjectStore(minio_client(settings.s3), settings.s3.bucket)


def _kafka_bus(settings: Settings) -> Any:
    from wotr_adapters.kafka import kafka_bus

    return kafka_bus(settings.kafka)


def _postgres_pool(settings: Settings) -> Iterator[Any]:
    from wotr_adapters.postgres import postgres_pool

    pool = postgres_pool(settings.postgres)
    try:
        yield pool
    finally:
        pool.close()


def _postgres_repo(pool: Any, settings: Settings) -> Any:
    from wotr_adapters.postgres import PostgresMetadataRepo

    return PostgresMetadataRepo(pool, schema=settings.postgres.schema)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    profile = providers.Callable(lambda s: s.profile, settings)
    observers = providers.Dependency(default=None)

    clickhouse = providers.Resource(_clickhouse_client, settings)
    postgres_pool = providers.Resource(_postgres_pool, settings)

    object_store = providers.Resource(
        _started,
        providers.Selector(
            profile,
            memory=providers.Singleton(InMemoryObjectStore),
            embedded=providers.Singleton(
                FilesystemObjectStore, providers.Callable(lambda s: s.data_dir / "objects" / s.bucket, settings)
            ),
            local=providers.Singleton(_minio_store, settings),
        ),
    )
    metadata_repo = providers.Resource(
        _started,
        providers.Selector(
            profile,
            memory=providers.Singleton(InMemoryMetadataRepo),
            embedded=providers.Singleton(
                SqliteMetadataRepo, providers.Callable(lambda s: s.data_dir / "metadata.db", settings)
            ),
            local=providers.Singleton(_postgres_repo, postgres_pool, settings),
        ),
    )
    event_bus = providers.Resource(
        _started,
        providers.Selector(
            profile,
            memory=providers.Singleton(InMemoryEventBus, providers.Callable(lambda s: s.topic, settings)),
            embedded=providers.Singleton(
                SqliteEventBus,
                providers.Callable(lambda s: s.data_dir / "bus.db", settings),
                providers.Callable(lambda s: s.topic, settings),
            ),
            local=providers.Singleton(_kafka_bus, settings),
        ),
    )
    # The same sink on both profiles: the DSN decides between the engine and a server.
    clickhouse_sink = providers.Singleton(
        ClickHouseAnalyticsSink, clickhouse, providers.Callable(lambda s: s.clickhouse.database, settings)
    )
    analytics_sink = providers.Resource(
        _started,
        providers.Selector(
            profile,
            memory=providers.Singleton(InMemoryAnalyticsSink),
            embedded=clickhouse_sink,
            local=clickhouse_sink,
        ),
    )

    ingest_service = providers.Singleton(
        IngestService,
        object_store,
        metadata_repo,
        event_bus,
        max_event_bytes=providers.Callable(lambda s: s.max_body_bytes, settings),
        observer=providers.Callable(lambda o: o and o.ingest, observers),
    )
    subscription = providers.Factory(
        lambda bus, s: bus.subscribe(s.kafka.group), event_bus, settings
    )
    analytics_loader = providers.Factory(
        AnalyticsLoader,
        subscription,
        analytics_sink,
        observer=providers.Callable(lambda o: o and o.loader, observers),
    )
    outbox_relay = providers.Singleton(
        OutboxRelay,
        metadata_repo,
        object_store,
        event_bus,
        grace=providers.Callable(lambda s: timedelta(seconds=s.relay_grace_seconds), settings),
        observer=providers.Callable(lambda o: o and o.relay, observers),
    )

    replay = providers.Factory(Replay, metadata_repo, object_store, event_bus)


def build_container(settings: Settings | None = None, observers: Any = None) -> Container:
    """Build the container for `settings` (default: from the environment)."""
    return Container(settings=settings or Settings.from_env(), observers=observers)
