"""Process entry points: the API server, the consumer and the relay, each with graceful
shutdown on SIGTERM/SIGINT and a readiness line on stdout."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from .container import Container
from .telemetry import Telemetry
from .workers import WorkerThread, run_consumer, run_relay

__all__ = ["consumer_worker", "relay_worker", "run_until_signalled", "serve"]

log = logging.getLogger(__name__)


def tune_gc_for_batches() -> None:
    """Fewer garbage-collector passes for a process that handles large batches.

    A batch of thousands of messages allocates millions of small objects; with the default
    thresholds the collector runs every 700 allocations and costs the consumer about half
    of its per-message time. Objects alive at start-up are frozen out of collection.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def consumer_worker(container: Container, telemetry: Telemetry | None = None) -> WorkerThread:
    """The consumer thread; its subscription and sink are built (and fail) here, not later."""
    settings = container.settings()
    loader = container.analytics_loader()
    return WorkerThread(
        "wotr-consumer",
        lambda stop: run_consumer(
            loader,
            stop,
            batch_size=settings.consumer_batch_size,
            batch_seconds=settings.consumer_batch_seconds,
            on_lag=telemetry.record_lag if telemetry else None,
        ),
    )


def relay_worker(container: Container) -> WorkerThread:
    settings = container.settings()
    relay = container.outbox_relay()
    return WorkerThread(
        "wotr-relay",
        lambda stop: run_relay(relay, stop, interval=settings.relay_interval_seconds),
    )


def serve(container: Container, telemetry: Telemetry, *, with_workers: bool) -> None:
    """Serve the API with uvicorn; with workers, the consumer and relay run in-process."""
    import uvicorn

    from .api import create_app

    settings = container.settings()
    workers = [consumer_worker(container, telemetry), relay_worker(container)] if with_workers else []
    app = create_app(container, workers=workers, telemetry=telemetry)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=10)


def run_until_signalled(
    container: Container,
    worker: WorkerThread,
    telemetry: Telemetry,
    dependencies: dict[str, Any],
    *,
    metrics_port: int,
    ready_file: Path | None = None,
) -> None:
    """Run one worker in the foreground until SIGTERM or SIGINT; then stop it cleanly.

    Metrics are served on 127.0.0.1:`metrics_port` (0: not served).
    """
    stopped = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("received signal %d, stopping", signum)
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if metrics_port:
        telemetry.serve(metrics_port, host=container.settings().metrics_host)
    telemetry.start_sampling(dependencies, repo=dependencies.get("metadata_repo"))
    worker.start()
    print("ready", flush=True)
    if ready_file is not None:
        ready_file.write_text("ready\n")
    stopped.wait()
    worker.stop(timeout=30)
    telemetry.shutdown()
    container.shutdown_resources()
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
