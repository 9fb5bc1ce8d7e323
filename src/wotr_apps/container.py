"""The composition root: the only place that builds adapters and wires services.

Each port is a `Selector` keyed by the profile, wrapped in a `Resource` that starts the
adapter on first use and closes it at `shutdown_resources()`. Drivers are imported by
the builder functions below, so a profile never imports another profile's drivers.

Every process asks this container for what it runs, and wires nothing itself: the API
process for `app` (the ASGI application, with its group commit, readiness map, telemetry
and, on the profiles without servers, the consumer and relay threads), `wotr consume`
and `wotr relay` for their worker and readiness map, `wotr replay` for `replay`, the
ETL for its job. `role` names the process (its telemetry service name and which ports
its readiness checks); the profile decides everything else, here and nowhere else.
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
from wotr_domain.services import AnalyticsLoader, GroupCommit, IngestService, OutboxRelay, Replay

from .settings import Settings
from .workers import consumer_worker, relay_worker

__all__ = ["ROLES", "Container", "build_container"]

ROLES = ("serve", "consume", "relay", "replay", "etl")


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


def _run_history(store: Any) -> Any:
    from .etl.history import RunHistory

    return RunHistory(store)


def _telemetry(role: str) -> Any:
    from .telemetry import Telemetry

    return Telemetry(f"wotr-{role}")


def _workers_mode(profile: str, override: bool | None) -> str:
    """`wotr serve` runs the consumer and relay in-process unless the profile has servers
    (local: they run as their own processes); `--with-workers`/`--api-only` override."""
    wanted = profile != "local" if override is None else override
    return "on" if wanted else "off"


def _api(parts: Any) -> Any:
    from .api import create_app

    return create_app(parts)


def _api_parts(**parts: Any) -> Any:
    from .api.app import ApiParts

    return ApiParts(**parts)


def _postgres_repo(pool: Any, settings: Settings) -> Any:
    from wotr_adapters.postgres import PostgresMetadataRepo

    return PostgresMetadataRepo(pool, schema=settings.postgres.schema)


class Container(containers.DeclarativeContainer):
    __self__ = providers.Self()
    settings = providers.Dependency(instance_of=Settings)
    profile = providers.Callable(lambda s: s.profile, settings)
    role = providers.Object("serve")
    with_workers = providers.Object(None)  # `wotr serve --with-workers` / `--api-only`; None: by profile

    telemetry = providers.Singleton(_telemetry, role)

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
        observer=telemetry.provided.ingest,
    )
    subscription = providers.Factory(
        lambda bus, s: bus.subscribe(s.kafka.group), event_bus, settings
    )
    analytics_loader = providers.Factory(
        AnalyticsLoader,
        subscription,
        analytics_sink,
        observer=telemetry.provided.loader,
    )
    outbox_relay = providers.Singleton(
        OutboxRelay,
        metadata_repo,
        object_store,
        event_bus,
        grace=providers.Callable(lambda s: timedelta(seconds=s.relay_grace_seconds), settings),
        observer=telemetry.provided.relay,
    )

    replay = providers.Factory(Replay, metadata_repo, object_store, event_bus)

    # -- what each process runs ---------------------------------------------------------

    # The ports a process uses, by role: its readiness checks them, and resolving the map
    # starts them (a process starts its adapters by asking for this, not as a side effect).
    ports = providers.Selector(
        role,
        serve=providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus,
                             analytics_sink=analytics_sink),
        consume=providers.Dict(event_bus=event_bus, analytics_sink=analytics_sink),
        relay=providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus),
        replay=providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus),
        etl=providers.Dict(object_store=object_store, metadata_repo=metadata_repo),
    )
    group_commit = providers.Singleton(GroupCommit, ingest_service.provided.ingest_many)
    run_history = providers.Singleton(_run_history, object_store)

    consumer = providers.Singleton(consumer_worker, analytics_loader, settings, telemetry.provided.record_lag)
    relay = providers.Singleton(relay_worker, outbox_relay, settings)
    serve_workers = providers.Selector(
        providers.Callable(_workers_mode, profile, with_workers),
        on=providers.List(consumer, relay),
        off=providers.List(),
    )
    app = providers.Singleton(
        _api,
        providers.Singleton(
            _api_parts,
            settings=settings,
            ports=ports.provider,
            ingest=ingest_service.provider,
            group_commit=group_commit,
            metadata_repo=metadata_repo.provider,
            analytics_sink=analytics_sink.provider,
            telemetry=telemetry,
            run_history=run_history.provider,
            workers=serve_workers,
            shutdown=__self__.provided.shutdown_resources,
        ),
    )


def build_container(
    settings: Settings | None = None, *, role: str = "serve", with_workers: bool | None = None
) -> Container:
    """Build the container of one process (`role`, one of `ROLES`) for `settings`
    (default: from the environment)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return Container(settings=settings or Settings.from_env(), role=role, with_workers=with_workers)
