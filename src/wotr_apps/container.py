"""The composition root: the only place that builds adapters and wires services.

Each port is a `Selector` keyed by the profile, wrapped in a `Resource` that starts the
adapter on first use and closes it at `shutdown_resources()`. Drivers are imported by
the builder functions below, so a profile never imports another profile's drivers.

Every process asks this container for what it runs, and wires nothing itself: the API
process for `app` (the ASGI application, with its group commit, readiness map, telemetry
and, on the profiles without servers, the consumer and relay threads), `wotr consume`
and `wotr relay` for their worker and readiness map, `wotr replay` for `replay`, `wotr
etl` and its benchmark for `etl_job` (its Spark session a resource, stopped at
`shutdown_resources()`) and `run_history`. `role` names the process (its telemetry
service name and which ports its readiness checks); the profile decides everything
else, here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers

from wotr_adapters.clickhouse import ClickHouseAnalyticsSink, clickhouse_client
from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryAnalyticsSink, InMemoryEventBus, InMemoryMetadataRepo, InMemoryObjectStore
from wotr_adapters.memory import InMemoryKeyStore
from wotr_adapters.sqlite_keys import SqliteKeyStore
from wotr_adapters.sqlite_bus import SqliteEventBus
from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
from wotr_domain.errors import ConfigError
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


@contextmanager
def _extra(name: str, profile: str) -> Iterator[None]:
    """A driver that is not installed is a one-line configuration error naming the extra."""
    try:
        yield
    except ModuleNotFoundError as e:
        raise ConfigError(
            "WOTR_PROFILE", f"{profile!r} needs the driver {e.name!r}: install it with pip install 'wotr[{name}]'"
        ) from e


def _clickhouse_client(settings: Settings) -> Iterator[Any]:
    with _extra("clickhouse", settings.profile):
        client = clickhouse_client(settings.clickhouse)
    try:
        yield client
    finally:
        client.close()


def _analytics_mode(profile: str, role: str, workers: str, settings: Settings) -> str:
    """Where this process's analytics rows live: `memory`; `engine` (its own in-process
    engine, or a ClickHouse server); `reader` (the API alone on the local profile with the
    in-process engine: that engine belongs to `wotr consume`, read through its SQL endpoint)."""
    if profile == "memory":
        return "memory"
    if role == "serve" and workers == "off" and settings.clickhouse.embedded and settings.sql_port:
        return "reader"
    return "engine"


def _reader_sink(settings: Settings) -> Any:
    """The consumer's engine, read through its SQL endpoint (ClickHouse HTTP interface)."""
    from dataclasses import replace

    from wotr_adapters.clickhouse import LazyClient

    endpoint = replace(settings.clickhouse, dsn=None, host=settings.metrics_host, port=settings.sql_port)
    return ClickHouseAnalyticsSink(LazyClient(lambda: clickhouse_client(endpoint)), endpoint.database, create=False)


def _sql_server(mode: str, sink: Any, settings: Settings) -> Any:
    """The read-only SQL endpoint of a process that owns the in-process engine, else None."""
    if mode != "engine" or not settings.clickhouse.embedded or not settings.sql_port:
        return None
    from .sql_server import SqlServer

    return SqlServer(sink, settings.metrics_host, settings.sql_port)


def _minio_store(settings: Settings) -> Any:
    with _extra("minio", settings.profile):
        from wotr_adapters.minio import MinioObjectStore, minio_client

        return MinioObjectStore(minio_client(settings.s3), settings.s3.bucket)


def _kafka_bus(settings: Settings) -> Any:
    with _extra("kafka", settings.profile):
        from wotr_adapters.kafka import kafka_bus

        return kafka_bus(settings.kafka)


def _postgres_pool(settings: Settings) -> Iterator[Any]:
    with _extra("postgres", settings.profile):
        from wotr_adapters.postgres import postgres_pool

        pool = postgres_pool(settings.postgres)
    try:
        yield pool
    finally:
        pool.close()


def _run_history(store: Any) -> Any:
    from .run_history import RunHistory

    return RunHistory(store)


def _etl_refused() -> Any:
    raise ConfigError("WOTR_PROFILE", "the ETL runs on the embedded or local profile, not on memory")


def _etl_layout(store: Any) -> Any:
    from .etl.layout import Layout

    return Layout.for_store(store)


def _etl_spark(layout: Any, settings: Settings, say: Any) -> Iterator[Any]:
    from .etl.session import SparkOptions, etl_session

    yield from etl_session(layout.root, settings.s3, settings.cache_dir / "spark-jars",
                           options=SparkOptions.from_settings(settings), say=say)


def _etl_job(spark: Any, store: Any, repo: Any, layout: Any, say: Any) -> Any:
    from .etl.job import EtlJob

    return EtlJob(spark, store, repo, layout, say=say)


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


def _postgres_keys(pool: Any, settings: Settings) -> Any:
    from wotr_adapters.postgres_keys import PostgresKeyStore

    return PostgresKeyStore(pool, schema=settings.postgres.schema)


def _postgres_buckets(pool: Any, settings: Settings) -> Any:
    from wotr_adapters.postgres_keys import PostgresRateLimiter

    return PostgresRateLimiter(pool, schema=settings.postgres.schema)


def _local_buckets() -> Any:
    from .api.limits import LocalBuckets

    return LocalBuckets()


def _write_keys(settings: Settings, store: Any) -> Any:
    """The API's key check, or None when write keys are off (`WOTR_REQUIRE_WRITE_KEY`)."""
    if not settings.require_write_key:
        return None
    from .api.auth import WriteKeys

    return WriteKeys(store, ttl=settings.write_key_cache_seconds)


def _rate_limiter(settings: Settings, buckets: Any, profile: str) -> Any:
    """The API's rate limit, or None when it is off (`WOTR_RATE_LIMIT_PER_SECOND` 0)."""
    if settings.rate_limit_per_second <= 0:
        return None
    from .api.limits import RateLimiter

    return RateLimiter(buckets, settings.rate_limit_per_second, settings.rate_limit_burst, blocking=profile == "local")


def _batch_slots(settings: Settings, observer: Any) -> Any:
    from wotr_domain.services.group_commit import InFlightLimit

    return InFlightLimit(settings.batches_in_flight_max, what="batches", observer=observer)


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
        ClickHouseAnalyticsSink, clickhouse, providers.Callable(lambda s: s.clickhouse.database, settings),
        cluster=providers.Callable(lambda s: s.clickhouse.cluster, settings),
    )
    workers_mode = providers.Callable(_workers_mode, profile, with_workers)
    analytics_mode = providers.Callable(_analytics_mode, profile, role, workers_mode, settings)
    analytics_sink = providers.Resource(
        _started,
        providers.Selector(
            analytics_mode,
            memory=providers.Singleton(InMemoryAnalyticsSink),
            engine=clickhouse_sink,
            reader=providers.Singleton(_reader_sink, settings),
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
    pipeline_ports = providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus,
                                    analytics_sink=analytics_sink)
    ports = providers.Selector(
        role,
        # The API alone on the local profile reads analytics through the consumer: whether
        # the consumer runs is not the API's readiness (`/analytics/latest` says 503 itself).
        serve=providers.Selector(
            analytics_mode,
            memory=pipeline_ports,
            engine=pipeline_ports,
            reader=providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus),
        ),
        consume=providers.Dict(event_bus=event_bus, analytics_sink=analytics_sink),
        relay=providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus),
        replay=providers.Dict(object_store=object_store, metadata_repo=metadata_repo, event_bus=event_bus),
        etl=providers.Dict(object_store=object_store, metadata_repo=metadata_repo),
    )
    group_commit = providers.Singleton(
        GroupCommit,
        ingest_service.provided.accept_many,  # answered once durable; the publish follows
        flushes=providers.Callable(lambda s: s.ingest_flushes, settings),
        max_queued=providers.Callable(lambda s: s.ingest_queue_max, settings),
        max_wait=providers.Callable(lambda s: s.ingest_max_wait_ms / 1000, settings),
        observer=telemetry.provided.ingest,
    )

    # The API edge: write keys (a port, stored by profile beside the metadata), the token
    # buckets of the rate limit (in process where one API process serves; in PostgreSQL on
    # `local`, shared by every API process), and the bound on batches in flight.
    key_store = providers.Resource(
        _started,
        providers.Selector(
            profile,
            memory=providers.Singleton(InMemoryKeyStore),
            embedded=providers.Singleton(
                SqliteKeyStore, providers.Callable(lambda s: s.data_dir / "keys.db", settings)
            ),
            local=providers.Singleton(_postgres_keys, postgres_pool, settings),
        ),
    )
    rate_buckets = providers.Resource(
        _started,
        providers.Selector(
            profile,
            memory=providers.Singleton(_local_buckets),
            embedded=providers.Singleton(_local_buckets),
            local=providers.Singleton(_postgres_buckets, postgres_pool, settings),
        ),
    )
    write_keys = providers.Singleton(_write_keys, settings, key_store.provider)
    rate_limiter = providers.Singleton(_rate_limiter, settings, rate_buckets.provider, profile)
    batch_slots = providers.Singleton(_batch_slots, settings, telemetry.provided.ingest)
    run_history = providers.Singleton(_run_history, object_store)

    # The ETL (`wotr etl`, its benchmark): its layout is where the object store is (the
    # memory profile's store is nowhere a Spark reader could go: refused); its Spark
    # session a resource, with the s3a jars only when that location is a bucket; `etl_say`
    # where its progress goes (the CLI overrides it).
    etl_say = providers.Object(print)
    etl_layout = providers.Selector(
        profile,
        memory=providers.Callable(_etl_refused),
        embedded=providers.Singleton(_etl_layout, object_store),
        local=providers.Singleton(_etl_layout, object_store),
    )
    etl_spark = providers.Resource(_etl_spark, etl_layout, settings, etl_say)
    etl_job = providers.Factory(_etl_job, etl_spark, object_store, metadata_repo, etl_layout, etl_say)

    consumer = providers.Singleton(consumer_worker, analytics_loader, settings, telemetry.provided.record_lag)
    relay = providers.Singleton(relay_worker, outbox_relay, settings)
    serve_workers = providers.Selector(
        workers_mode,
        on=providers.List(consumer, relay),
        off=providers.List(),
    )
    sql_server = providers.Singleton(_sql_server, analytics_mode, analytics_sink, settings)
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
            write_keys=write_keys,
            rate_limiter=rate_limiter,
            batch_slots=batch_slots,
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
