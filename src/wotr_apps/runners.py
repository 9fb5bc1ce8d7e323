"""Process entry points: the API server, the consumer and the relay, each with graceful
shutdown on SIGTERM/SIGINT and a readiness line on stdout.

A worker thread that crashes takes its process down: the process shuts down gracefully
and exits with `EXIT_WORKER_CRASHED` (70, EX_SOFTWARE), so that a supervisor sees the
failure and restarts it, instead of a process that looks healthy while nothing runs.

`wotr consume` waits for its dependencies at start-up: while Kafka (or a ClickHouse
server) does not answer, it logs why and tries again with backoff, for as long as it
takes, until SIGTERM/SIGINT stops it (exit 0); it is ready once they answer.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wotr_domain.errors import Unavailable

from .container import Container
from .workers import Backoff, WorkerThread, describe

__all__ = ["EXIT_WORKER_CRASHED", "WAITS_AT_START", "run_until_signalled", "serve", "tune_gc"]

log = logging.getLogger(__name__)

EXIT_WORKER_CRASHED = 70  # EX_SOFTWARE: an internal error, not a configuration or an outage

# The roles that wait for a dependency down at start-up instead of exiting with status 3.
WAITS_AT_START = frozenset({"consume"})


def _exit_status(workers: list[WorkerThread]) -> int:
    crashed = [w for w in workers if w.error is not None]
    for worker in crashed:
        log.critical("exiting with status %d: worker %s crashed: %s", EXIT_WORKER_CRASHED, worker.name, describe(worker.error))
    return EXIT_WORKER_CRASHED if crashed else 0


def _shut_down_process(worker: WorkerThread) -> None:
    """A worker crashed under `wotr serve`: SIGTERM to this process starts uvicorn's
    graceful shutdown (lifespan shutdown stops the other workers and the adapters)."""
    log.critical("worker %s crashed; shutting the process down", worker.name)
    os.kill(os.getpid(), signal.SIGTERM)


def tune_gc() -> None:
    """Fewer garbage-collector passes for a process that allocates fast (the API, the consumer).

    A batch of thousands of messages, or thousands of requests a second, allocates millions
    of small objects; with the default thresholds the collector runs every 700 allocations:
    it cost the consumer about half of its per-message time, and the API 27-29% of its CPU
    on batches with a full collection about once a second (each one a pause of the event
    loop). Objects alive at start-up are frozen out of collection.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def serve(container: Container) -> int:
    """Serve the container's API with uvicorn (with the consumer and relay threads it
    carries on the profiles without servers).

    Returns the exit status: 0, or `EXIT_WORKER_CRASHED` when a worker crashed (which shuts
    the server down; GET /ready answers 503 naming the worker meanwhile).
    """
    from .api.server import build_server, run_server

    workers = list(container.serve_workers())
    for worker in workers:
        worker.on_crash = _shut_down_process
    app = container.app()
    sql = container.sql_server() if workers else None  # the in-process consumer's engine, for SQL clients
    if sql is not None:
        sql.start()
    # uvicorn re-raises the SIGTERM it shut down on once it is done: one sent by a crashing
    # worker must not kill the process before it can exit with its status; any other
    # SIGTERM keeps its default effect.
    previous = _on_sigterm(lambda: any(w.error is not None for w in workers))
    try:
        run_server(build_server(app, container.settings()))  # uvicorn, with header limits and read timeouts
    finally:
        if sql is not None:
            sql.stop()
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return _exit_status(workers)


def _on_sigterm(crashed: Callable[[], bool]) -> Any:
    """Handle SIGTERM as by default (terminate), unless `crashed()`: then ignore it (the
    shutdown it asked for is under way or done). Returns the previous handler, or None
    off the main thread (where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, _frame: object) -> None:
        if crashed():
            log.info("SIGTERM after a worker crash: shutting down with status %d", EXIT_WORKER_CRASHED)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return signal.signal(signal.SIGTERM, handler)


def run_until_signalled(container: Container, *, metrics_port: int, ready_file: Path | None = None) -> int:
    """Run the container's worker (`wotr consume`: the consumer, `wotr relay`: the relay) in
    the foreground until SIGTERM or SIGINT, or until it crashes; then stop it cleanly.
    Returns the exit status: 0, or `EXIT_WORKER_CRASHED`.

    Metrics are served on 127.0.0.1:`metrics_port` (0: not served). A role in
    `WAITS_AT_START` waits for its dependencies first (`_start_ports`); stopped meanwhile,
    it returns 0 without having been ready.
    """
    role = container.role()
    telemetry = container.telemetry()
    stopped = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("received signal %d, stopping", signum)
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = _start_ports(container, role, stopped)
    if started is None:
        container.shutdown_resources()
        return 0
    worker, ports = started
    worker.on_crash = lambda _worker: stopped.set()
    if metrics_port:
        telemetry.serve(metrics_port, host=container.settings().metrics_host)
    telemetry.start_sampling(ports, repo=ports.get("metadata_repo"))
    sql = container.sql_server() if role == "consume" else None  # this process owns the engine: serve reads
    if sql is not None:
        sql.start()
    worker.start()
    print("ready", flush=True)
    if ready_file is not None:
        ready_file.write_text("ready\n")
    stopped.wait()
    worker.stop(timeout=30)
    if sql is not None:
        sql.stop()
    telemetry.shutdown()
    container.shutdown_resources()
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
    return _exit_status([worker])


def _start_ports(container: Container, role: str, stopped: threading.Event) -> tuple[WorkerThread, dict] | None:
    """Start the role's ports, then build its worker; returns both.

    A port that is down (`Unavailable`) is raised at once, unless the role is in
    `WAITS_AT_START`: then the attempt is logged and repeated with backoff until every
    port answers, or returns None as soon as `stopped` is set (a signal that comes during
    an attempt is seen when the attempt ends: a Kafka attempt lasts at most its request
    timeout, 5 s). The ports come first so that a failed attempt leaves no consumer-group
    member behind.
    """
    backoff = Backoff(start=0.5, cap=10.0)
    attempts = 0
    while not stopped.is_set():
        try:
            ports = container.ports()
            worker: WorkerThread = container.consumer() if role == "consume" else container.relay()
            if attempts:
                log.info("%s: its dependencies answer after %d failed attempt(s); starting", role, attempts)
            return worker, ports
        except Unavailable as e:
            if role not in WAITS_AT_START:
                raise
            if stopped.is_set():
                break
            attempts += 1
            delay = backoff.next()
            log.warning("%s: cannot start yet (attempt %d), retrying in %.1fs: %s", role, attempts, delay, e)
            stopped.wait(delay)
    log.info("%s: stopped before its dependencies answered", role)
    return None
