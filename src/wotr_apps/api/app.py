"""The Litestar application, built from parts the container provides.

`ApiParts` is everything the API uses, handed over by the composition root: the lifespan
starts the ports (by resolving them), the group commit and, for `wotr serve` on the
profiles without servers, the consumer and relay threads, and shuts them down in reverse.
Nothing here builds an adapter or a service.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from wotr_domain.ports import AnalyticsSink, MetadataRepo
from wotr_domain.services import GroupCommit, IngestService

from ..settings import Settings
from ..telemetry import Telemetry
from ..workers import WorkerThread
from .errors import EXCEPTION_HANDLERS
from .ingest import ingest_batch, ingest_one
from .metrics import metrics_route
from .queries import event_metadata, health, latest_rows, ready

__all__ = ["create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiParts:
    """What the API runs on. Callables resolve lazily: resolving `ports` starts the adapters."""

    settings: Settings
    ports: Callable[[], dict[str, Any]]
    ingest: Callable[[], IngestService]
    group_commit: GroupCommit
    metadata_repo: Callable[[], MetadataRepo]
    analytics_sink: Callable[[], AnalyticsSink]
    telemetry: Telemetry | None
    run_history: Callable[[], Any]
    workers: Sequence[WorkerThread]
    shutdown: Callable[[], None]


def create_app(parts: ApiParts) -> Litestar:
    settings, group_commit, telemetry, workers = parts.settings, parts.group_commit, parts.telemetry, parts.workers
    limits = {
        "body": settings.max_body_bytes,
        "batch_bytes": settings.max_batch_bytes,
        "batch_events": settings.max_batch_events,
    }

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.workers = tuple(workers)  # GET /ready reports a crashed worker
        ports = await anyio.to_thread.run_sync(parts.ports)  # starts the adapters
        await group_commit.start()
        if telemetry is not None:
            telemetry.start_sampling(ports, repo=ports.get("metadata_repo"), etl_history=parts.run_history())
        for worker in workers:
            worker.start()
        log.info("wotr API ready on profile %s", settings.profile)
        try:
            yield
        finally:
            await group_commit.stop()
            for worker in workers:
                await anyio.to_thread.run_sync(worker.stop)
            if telemetry is not None:
                telemetry.shutdown()
            await anyio.to_thread.run_sync(parts.shutdown)

    routes: list[Any] = [ingest_one, ingest_batch, event_metadata, latest_rows, health, ready]
    plugins: list[Any] = []
    if telemetry is not None:
        routes.append(metrics_route(telemetry))
        plugins.append(
            OpenTelemetryPlugin(OpenTelemetryConfig(meter_provider=telemetry.provider, exclude=["/metrics"]))
        )

    return Litestar(
        route_handlers=routes,
        dependencies={
            "ingest": Provide(lambda: parts.ingest(), sync_to_thread=False),
            "metadata_repo": Provide(lambda: parts.metadata_repo(), sync_to_thread=False),
            "analytics_sink": Provide(lambda: parts.analytics_sink(), sync_to_thread=False),
            "dependencies": Provide(lambda: parts.ports(), sync_to_thread=False),
            "limits": Provide(lambda: limits, sync_to_thread=False),
            "group_commit": Provide(lambda: group_commit, sync_to_thread=False),
        },
        signature_types=[IngestService, MetadataRepo, AnalyticsSink, GroupCommit],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        plugins=plugins,
        request_max_body_size=max(settings.max_body_bytes, settings.max_batch_bytes) + 1,
        openapi_config=OpenAPIConfig(title="wotr", version="0.1.0", description="Event ingestion API"),
    )
