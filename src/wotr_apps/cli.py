"""The `wotr` command: serve, consume, relay, ingest samples, and run the native stack."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from wotr_domain.errors import ConfigError, Unavailable

__all__ = ["main"]

METRICS_PORTS = {"consume": 9464, "relay": 9465}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wotr", description="wotr event-ingestion platform")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API (embedded: with consumer and relay in-process)")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--with-workers", dest="workers", action="store_true", default=None,
                      help="also run the consumer and the relay in this process")
    mode.add_argument("--api-only", dest="workers", action="store_false", help="serve the API alone")

    for name, text in (("consume", "load events from the bus into ClickHouse"),
                       ("relay", "publish events the API could not publish (outbox)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--ready-file", type=Path, help="write this file once ready; removed at exit")
        cmd.add_argument("--metrics-port", type=int, default=None,
                         help=f"serve /metrics on 127.0.0.1:PORT (default WOTR_METRICS_PORT or {METRICS_PORTS[name]}; 0 disables)")

    ingest = sub.add_parser("ingest", help="send sample events to a running API")
    ingest.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL (default %(default)s)")
    ingest.add_argument("-n", "--count", type=int, default=10, help="events to send (default %(default)s)")
    ingest.add_argument("--batch", type=int, default=0, help="send through /ingest/batch in batches of this size")

    sub.add_parser("etl", help="raw JSON archive -> curated Parquet (PySpark); `wotr etl --help` for options",
                   add_help=False)

    sub.add_parser("bench", help="measure every hop beside its ceiling (source checkout; `wotr bench --help`)",
                   add_help=False)

    stack = sub.add_parser("stack", help="the native local stack: up | down | status | logs ...", add_help=False)
    stack.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark harness lives in the source checkout, beside src/
        root = Path(__file__).resolve().parents[2]
        if not (root / "bench" / "run.py").is_file():
            print("wotr bench: run it from a source checkout (bench/ not found next to src/)", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "bench", *argv[1:]], cwd=root)
    if argv[:1] == ["etl"]:  # the ETL parses its own options (--date, --since, --history, --bench)
        from .etl.cli import main as etl_main

        return etl_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "stack":
        from .stack.cli import main as stack_main

        return stack_main(args.args)
    if args.command == "ingest":
        from .sample import send_samples

        return send_samples(args.url, args.count, args.batch)
    try:
        return _run_service(args)
    except ConfigError as e:
        print(f"wotr: configuration error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"wotr: {e}", file=sys.stderr)
        return 3


def _run_service(args: argparse.Namespace) -> int:
    from .container import build_container
    from .runners import consumer_worker, relay_worker, run_until_signalled, serve, tune_gc_for_batches
    from .settings import Settings
    from .telemetry import Telemetry

    settings = Settings.from_env()
    telemetry = Telemetry(f"wotr-{args.command}")
    container = build_container(settings, observers=telemetry)
    if args.command == "serve":
        with_workers = settings.profile != "local" if args.workers is None else args.workers
        return serve(container, telemetry, with_workers=with_workers)  # 70 when a worker crashed
    port = args.metrics_port if args.metrics_port is not None else (settings.metrics_port or METRICS_PORTS[args.command])
    if args.command == "consume":
        tune_gc_for_batches()
        worker = consumer_worker(container, telemetry)
        deps = {"event_bus": container.event_bus(), "analytics_sink": container.analytics_sink()}
    else:
        worker = relay_worker(container)
        deps = {"object_store": container.object_store(), "metadata_repo": container.metadata_repo(),
                "event_bus": container.event_bus()}
    return run_until_signalled(container, worker, telemetry, deps, metrics_port=port, ready_file=args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
