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
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.utils import normalize_path
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE

from wotr_domain.ports import AnalyticsSink, MetadataRepo
from wotr_domain.services import GroupCommit, IngestService
from wotr_domain.services.group_commit import InFlightLimit

from ..settings import Settings
from ..telemetry import Telemetry
from ..workers import WorkerThread
from .auth import INGEST_GUARDS, WriteKeys
from .errors import EXCEPTION_HANDLERS
from .ingest import ingest_batch, ingest_one
from .limits import RateLimiter, rate_limit_headers
from .edge import Admission, IngestEdge, LoopLag, shed_early
from .http_metrics import HttpMetrics
from .metrics import metrics_route
from .openapi import contract_openapi_config
from .queries import event_metadata, health, latest_rows, ready
from .segment import TRACKING_ROUTES, OriginPolicy

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
    # The edge (auth.py, limits.py): None when write keys / rate limits are off.
    write_keys: WriteKeys | None = None
    rate_limiter: RateLimiter | None = None
    batch_slots: InFlightLimit | None = None


def route_details(scope: Any) -> tuple[str, dict[str, str]]:
    """Span name and `http.route` of a request: its method and route template
    (`GET /events/{event_id}`), never the raw path, so a metric has one series per route
    and not one per event id (a path no route serves is `unmatched`).

    The metrics middleware runs around the router, before routing, so the template is
    looked up here with the router's own (cached) lookup."""
    method = str(scope.get("method", "")).strip()
    template = scope.get("path_template")
    if template is None:
        try:
            path = scope["path"]
            if root_path := scope.get("root_path", ""):
                path = path.split(root_path, maxsplit=1)[-1]
            template = scope["app"].asgi_router.handle_routing(path=normalize_path(path), method=method or None)[4]
        except Exception:  # not found, method not allowed: no route, one label for all of them
            template = "unmatched"
    route = f"{method} {template}" if method else template
    return route, {HTTP_ROUTE: route}


def create_app(parts: ApiParts) -> Litestar:
    settings, group_commit, telemetry, workers = parts.settings, parts.group_commit, parts.telemetry, parts.workers
    write_keys, rate_limiter = parts.write_keys, parts.rate_limiter
    batch_slots = parts.batch_slots or InFlightLimit(settings.batches_in_flight_max, what="batches")
    limits = {
        "body": settings.max_body_bytes,
        "batch_bytes": settings.max_batch_bytes,
        "batch_events": settings.max_batch_events,
    }

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.workers = tuple(workers)  # GET /ready reports a crashed worker
        ports = await anyio.to_thread.run_sync(parts.ports)  # starts the adapters
        if write_keys is not None:
            await write_keys.start()  # the key store
        if rate_limiter is not None:
            await rate_limiter.start()  # where the buckets live
        await group_commit.start()
        await admission.start()  # from now on the server may refuse before reading
        if telemetry is not None:
            telemetry.start_sampling(ports, repo=ports.get("metadata_repo"), etl_history=parts.run_history())
        for worker in workers:
            worker.start()
        log.info("wotr API ready on profile %s", settings.profile)
        try:
            yield
        finally:
            await admission.stop()
            await group_commit.stop()
            for worker in workers:
                await anyio.to_thread.run_sync(worker.stop)
            if telemetry is not None:
                telemetry.shutdown()
            await anyio.to_thread.run_sync(parts.shutdown)

    # The tracking endpoints write events: the same guards as /ingest (key, then rate limit).
    tracking = Router("/", route_handlers=TRACKING_ROUTES, guards=INGEST_GUARDS)
    routes: list[Any] = [ingest_one, ingest_batch, tracking, event_metadata, latest_rows, health, ready]
    cors = cors_config(settings.cors_origins)
    origins = OriginPolicy(cors)  # the tracking routes refuse other browser origins
    edge = IngestEdge(parts.ingest, group_commit, limits, batch_slots, origins)
    admission = Admission(group_commit, LoopLag(), max_in_flight=settings.ingest_in_flight_max)
    plugins: list[Any] = []
    middleware: list[Any] = []
    if telemetry is not None:
        routes.append(metrics_route(telemetry))
        middleware.append(HttpMetrics(telemetry.provider.get_meter("wotr.http"),
                                      lambda scope: route_details(scope)[0], exclude=("/metrics",)))
    middleware.append(shed_early(admission))  # inside the metrics: shed requests are measured too

    return Litestar(
        route_handlers=routes,
        dependencies={
            "edge": Provide(lambda: edge, sync_to_thread=False),
            "ingest": Provide(lambda: parts.ingest(), sync_to_thread=False),
            "metadata_repo": Provide(lambda: parts.metadata_repo(), sync_to_thread=False),
            "analytics_sink": Provide(lambda: parts.analytics_sink(), sync_to_thread=False),
            "dependencies": Provide(lambda: _ready_ports(parts, write_keys), sync_to_thread=False),
            "limits": Provide(lambda: limits, sync_to_thread=False),
            "origins": Provide(lambda: origins, sync_to_thread=False),
            "group_commit": Provide(lambda: group_commit, sync_to_thread=False),
            "batch_slots": Provide(lambda: batch_slots, sync_to_thread=False),
        },
        signature_types=[IngestService, MetadataRepo, AnalyticsSink, GroupCommit, InFlightLimit, IngestEdge],
        # Read by the ingest guards (auth.require_write_key, limits.rate_limit); set here,
        # not at start-up, so that no app ever serves ingest unguarded when keys are on.
        state=State({"write_keys": write_keys, "rate_limiter": rate_limiter}),
        middleware=middleware + ([rate_limit_headers] if rate_limiter is not None else []),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        plugins=plugins,
        request_max_body_size=max(settings.max_body_bytes, settings.max_batch_bytes) + 1,
        cors_config=cors,
        openapi_config=contract_openapi_config(require_write_key=settings.require_write_key),
    )


def _ready_ports(parts: ApiParts, write_keys: WriteKeys | None) -> dict[str, Any]:
    """What GET /ready checks: the ports, and the key store when write keys are on."""
    ports = parts.ports()
    return ports if write_keys is None else {**ports, "key_store": write_keys.store()}


def cors_config(origins: Sequence[str]) -> CORSConfig | None:
    """CORS for browser pages on `origins` (WOTR_CORS_ORIGINS); None (off) when there are none.

    Preflights are answered for POST with the headers the API reads (the JSON or text
    body, its encoding, a write key); `Retry-After` is readable by the page on a 429 or 503.
    """
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["content-type", "content-encoding", "authorization", "x-write-key"],
        expose_headers=["retry-after"],
        max_age=600,
    )
