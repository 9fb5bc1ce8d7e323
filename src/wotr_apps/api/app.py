"""The Litestar application, bridged to the container.

Dependencies come from the container (`Provide`), the lifespan starts the adapters (and,
for `wotr serve`, the consumer and relay threads) and shuts them down in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from wotr_domain.ports import AnalyticsSink, MetadataRepo
from wotr_domain.services import IngestService

from ..container import Container
from ..etl.history import RunHistory
from ..telemetry import Telemetry
from ..workers import WorkerThread
from .errors import EXCEPTION_HANDLERS
from wotr_domain.services import GroupCommit
from .ingest import ingest_batch, ingest_one
from .metrics import metrics_route
from .queries import event_metadata, health, latest_rows, ready

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    container: Container,
    *,
    workers: Sequence[WorkerThread] = (),
    telemetry: Telemetry | None = None,
) -> Litestar:
    settings = container.settings()
    limits = {
        "body": settings.max_body_bytes,
        "batch_bytes": settings.max_batch_bytes,
        "batch_events": settings.max_batch_events,
    }

    def dependencies() -> dict[str, Any]:
        return {
            "object_store": container.object_store(),
            "metadata_repo": container.metadata_repo(),
            "event_bus": container.event_bus(),
            "analytics_sink": container.analytics_sink(),
        }

    group_commit = GroupCommit(lambda items: container.ingest_service().ingest_many(items))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.workers = tuple(workers)  # GET /ready reports a crashed worker
        await anyio.to_thread.run_sync(container.ingest_service)  # starts the adapters
        await group_commit.start()
        if telemetry is not None:
            telemetry.start_sampling(
                dependencies(), repo=container.metadata_repo(), etl_history=RunHistory(container.object_store())
            )
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
            await anyio.to_thread.run_sync(container.shutdown_resources)

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
            "ingest": Provide(lambda: container.ingest_service(), sync_to_thread=False),
            "metadata_repo": Provide(lambda: container.metadata_repo(), sync_to_thread=False),
            "analytics_sink": Provide(lambda: container.analytics_sink(), sync_to_thread=False),
            "dependencies": Provide(dependencies, sync_to_thread=False),
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
