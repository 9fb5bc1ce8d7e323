"""`GET /metrics`: the process's OpenTelemetry metrics in Prometheus text format."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from ..telemetry import Telemetry

__all__ = ["metrics_route"]


def metrics_route(telemetry: Telemetry) -> Any:
    @get("/metrics", sync_to_thread=False, include_in_schema=False)
    def metrics() -> Response[bytes]:
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics
