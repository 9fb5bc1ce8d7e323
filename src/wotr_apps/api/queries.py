"""Read endpoints: event metadata, latest analytics rows, liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter

from wotr_domain.errors import WotrError
from wotr_domain.models import AnalyticsRow, EventMetadata
from wotr_domain.ports import AnalyticsSink, MetadataRepo

from .errors import RETRY_AFTER_SECONDS

__all__ = ["event_metadata", "health", "latest_rows", "ready"]

log = logging.getLogger(__name__)


@get("/events/{event_id:str}", sync_to_thread=True, summary="Metadata and status of one event")
def event_metadata(event_id: FromPath[str], metadata_repo: NamedDependency[MetadataRepo]) -> EventMetadata:
    return metadata_repo.get(event_id)


@get("/analytics/latest", sync_to_thread=True, summary="Latest rows of wotr.ingested_data")
def latest_rows(
    analytics_sink: NamedDependency[AnalyticsSink], limit: int = Parameter(default=10, ge=1, le=1000)
) -> list[AnalyticsRow]:
    """The newest rows by `created_at`, one per event (the seed's `ORDER BY created_at DESC`)."""
    return analytics_sink.latest(limit)


@get("/health", summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", sync_to_thread=True, summary="Every dependency answers and every in-process worker runs")
def ready(dependencies: NamedDependency[dict[str, Any]], state: State) -> Response[dict]:
    checks: dict[str, str] = {}
    for name, adapter in dependencies.items():
        try:
            adapter.check()
            checks[name] = "ok"
        except WotrError as e:
            checks[name] = "down"
            log.warning("readiness: %s is down: %s", name, e)  # details for the logs, not for any caller
    for worker in state.get("workers", ()):  # `wotr serve` with the consumer and relay in-process
        try:
            worker.check()
            checks[worker.name] = "ok"
        except WotrError as e:
            checks[worker.name] = "down"
            log.warning("readiness: worker %s is down: %s", worker.name, e)
    up = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ready" if up else "unavailable", "checks": checks},
        status_code=200 if up else 503,
        headers=None if up else {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
