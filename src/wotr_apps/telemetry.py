"""OpenTelemetry metrics, exported in Prometheus format.

One `Telemetry` per process: a MeterProvider whose Prometheus reader registers on its own
`CollectorRegistry` (served at `GET /metrics` by the API, or on a loopback port by the
consumer and relay). The services report through the observer objects `ingest`,
`loader` and `relay`; dependency health and the outbox backlog are sampled by a
background thread so that a scrape never waits on a slow dependency.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from wotr_domain.errors import WotrError
from wotr_domain.models import EventStatus

__all__ = ["DEPENDENCY_GAUGES", "Telemetry"]

log = logging.getLogger(__name__)

# The seed's gauge names, one per port: 1 when the dependency answers, else 0.
DEPENDENCY_GAUGES = {
    "object_store": "minio_status",
    "metadata_repo": "postgres_status",
    "event_bus": "kafka_status",
    "analytics_sink": "clickhouse_status",
}


class Telemetry:
    def __init__(self, service: str) -> None:
        # Stable HTTP semantic conventions for Litestar's OpenTelemetry plugin.
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
        self.registry = CollectorRegistry()
        self._reader = PrometheusMetricReader(registry=self.registry)
        self.provider = MeterProvider(
            metric_readers=[self._reader], resource=Resource.create({"service.name": service})
        )
        meter = self.provider.get_meter("wotr")
        self.ingest = _IngestMetrics(meter)
        self.loader = _LoaderMetrics(meter)
        self.relay = _RelayMetrics(meter)
        self._health: dict[str, int] = {}
        self._backlog: int | None = None
        self._lag: dict[int, int] = {}
        self._etl: Any = None  # the last ETL run record, when one is known
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        for port, name in DEPENDENCY_GAUGES.items():
            meter.create_observable_gauge(
                name, callbacks=[self._health_callback(port)], description=f"1 when the {port.replace('_', ' ')} answers, else 0"
            )
        meter.create_observable_gauge(
            "wotr.outbox.backlog", callbacks=[self._backlog_callback], unit="{event}",
            description="Accepted events not yet published (status stored)",
        )
        meter.create_observable_gauge(
            "wotr.consumer.lag", callbacks=[self._lag_callback], unit="{message}",
            description="Messages not yet committed by the consumer group, per partition",
        )

        meter.create_observable_gauge(
            "wotr.etl.last_run.rows", callbacks=[self._etl_rows_callback], unit="{row}",
            description="Rows of the last ETL run, by kind (read, written, rejected)",
        )
        meter.create_observable_gauge(
            "wotr.etl.last_run.duration", callbacks=[self._etl_duration_callback], unit="s",
            description="Duration of the last ETL run",
        )
        meter.create_observable_gauge(
            "wotr.etl.last_run.success", callbacks=[self._etl_success_callback],
            description="1 when the last ETL run succeeded (or had nothing to do), else 0",
        )

    # -- sampled state -------------------------------------------------------------------

    def _health_callback(self, port: str) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(_: CallbackOptions) -> list[Observation]:
            value = self._health.get(port)
            return [] if value is None else [Observation(value)]

        return callback

    def _backlog_callback(self, _: CallbackOptions) -> list[Observation]:
        return [] if self._backlog is None else [Observation(self._backlog)]

    def _lag_callback(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(lag, {"partition": str(p)}) for p, lag in sorted(self._lag.items())]

    def _etl_rows_callback(self, _: CallbackOptions) -> list[Observation]:
        run = self._etl
        if run is None:
            return []
        return [Observation(run.rows_read, {"kind": "read"}), Observation(run.rows_written, {"kind": "written"}),
                Observation(run.rows_rejected, {"kind": "rejected"})]

    def _etl_duration_callback(self, _: CallbackOptions) -> list[Observation]:
        return [] if self._etl is None else [Observation(self._etl.duration_seconds)]

    def _etl_success_callback(self, _: CallbackOptions) -> list[Observation]:
        if self._etl is None or self._etl.status == "running":
            return []
        return [Observation(1 if self._etl.status in ("succeeded", "nothing to do") else 0)]

    def record_lag(self, lag: Mapping[int, int]) -> None:
        self._lag = dict(lag)

    def sample(self, dependencies: Mapping[str, Any], repo: Any | None = None, etl_history: Any | None = None) -> None:
        """Check every dependency once (and the backlog, and the last ETL run) and keep the
        results for scrapes. The ETL is a batch job that Prometheus cannot scrape: its
        run history, kept next to the curated output, is read here instead."""
        for port, adapter in dependencies.items():
            try:
                adapter.check()
                self._health[port] = 1
            except WotrError:
                self._health[port] = 0
        if repo is not None:
            try:
                self._backlog = repo.count(EventStatus.STORED)
            except WotrError:
                pass  # keep the last known value; the health gauge says the repo is down
        if etl_history is not None:
            try:
                finished = [r for r in etl_history.runs(limit=3) if r.status != "running"]
                self._etl = finished[-1] if finished else self._etl
            except WotrError:
                pass

    def start_sampling(
        self, dependencies: Mapping[str, Any], repo: Any | None = None, etl_history: Any | None = None, every: float = 5.0
    ) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.sample(dependencies, repo, etl_history)
                except Exception:  # a sampler must never die
                    log.exception("telemetry sampling failed")
                self._stop.wait(every)

        self._sampler = threading.Thread(target=loop, name="wotr-telemetry", daemon=True)
        self._sampler.start()

    # -- exposition ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve `/metrics` on its own port (consumer and relay processes)."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)

    def shutdown(self) -> None:
        self._stop.set()
        self.provider.shutdown()


class _IngestMetrics:
    """Implements the domain's IngestObserver."""

    def __init__(self, meter: Any) -> None:
        # Events by outcome are plain totals, read when metrics are collected: a refusal is
        # counted with one addition, not an OpenTelemetry measurement (whose attribute
        # hashing took a quarter of the event loop while it shed thousands of requests a
        # second).
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(
            "wotr.ingest", callbacks=[self._observe], unit="{event}", description="Events by outcome at ingest"
        )
        self._bytes = meter.create_counter("wotr.ingest.payload", unit="By", description="Bytes of accepted events")
        self._objects = meter.create_counter("wotr.objects.stored", unit="{object}", description="Raw objects written")
        self._recorded = meter.create_counter("wotr.metadata.recorded", unit="{row}", description="Metadata rows recorded")
        self._published = meter.create_counter("wotr.messages.published", unit="{message}", description="Messages published")
        self._deferred = meter.create_counter(
            "wotr.publish.deferred", unit="{event}", description="Accepted events whose publish was left to the relay"
        )

    def _count(self, outcome: str, events: int) -> None:
        with self._lock:  # flush threads and the event loop both count
            self._totals[outcome] = self._totals.get(outcome, 0) + events

    def _observe(self, _: CallbackOptions) -> list[Observation]:
        with self._lock:
            return [Observation(n, {"outcome": outcome}) for outcome, n in self._totals.items()]

    def accepted(self, events: int, size_bytes: int) -> None:
        if events:
            self._count("accepted", events)
            self._bytes.add(size_bytes)
            self._objects.add(events)
            self._recorded.add(events)

    def duplicates(self, events: int) -> None:
        if events:
            self._count("duplicate", events)

    def rejected(self, events: int) -> None:
        if events:
            self._count("rejected", events)

    def failed(self, events: int) -> None:
        if events:
            self._count("failed", events)

    def shed(self, events: int) -> None:
        """Refused at once because the ingest queue or the batches in flight are at their
        bound (503 + Retry-After); a shed batch counts once (its events were not read)."""
        if events:
            self._count("shed", events)

    def published(self, events: int) -> None:
        self._published.add(events, {"path": "api"})

    def publish_deferred(self, events: int) -> None:
        self._deferred.add(events)


class _LoaderMetrics:
    """Implements the domain's LoaderObserver."""

    def __init__(self, meter: Any) -> None:
        self._batch = meter.create_histogram(
            "wotr.consumer.batch.size", unit="{message}", description="Messages per consumer batch",
            explicit_bucket_boundaries_advisory=[1, 10, 50, 100, 500, 1000, 5000, 10000],
        )
        self._rows = meter.create_counter("wotr.sink.rows", unit="{row}", description="Rows loaded into ClickHouse")
        self._dead = meter.create_counter("wotr.dead.letters", unit="{message}", description="Messages sent to the dead-letter topic")

    def batch(self, size: int) -> None:
        if size:
            self._batch.record(size)

    def loaded(self, rows: int) -> None:
        self._rows.add(rows)

    def dead_lettered(self, messages: int) -> None:
        self._dead.add(messages)


class _RelayMetrics:
    """Implements the domain's RelayObserver."""

    def __init__(self, meter: Any) -> None:
        self._published = meter.create_counter("wotr.messages.published", unit="{message}", description="Messages published")
        self._faults = meter.create_counter(
            "wotr.archive.faults", unit="{event}",
            description="Recorded events whose archived bytes are missing or fail their checksum, by kind",
        )

    def relayed(self, events: int) -> None:
        self._published.add(events, {"path": "relay"})

    def fault(self, kind: str) -> None:
        self._faults.add(1, {"kind": kind, "reader": "relay"})
