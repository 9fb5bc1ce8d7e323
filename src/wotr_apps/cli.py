"""The `wotr` command: serve, consume, relay, ingest samples, the ETL.

Other packages add subcommands through the `wotr.commands` entry point group: each entry
names a `main(argv) -> int`, called with the arguments after the subcommand. The testing
package (`wotr[testing]`) registers `stack`, the native service stack; the runtime never
imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from wotr_domain.errors import ConfigError, Unavailable

__all__ = ["main"]

METRICS_PORTS = {"consume": 9464, "relay": 9465}

BUILTIN_COMMANDS = frozenset({"serve", "consume", "relay", "ingest", "etl", "replay", "bench", "keys", "metadata"})
COMMANDS_GROUP = "wotr.commands"
# Subcommands other packages provide: their help, and the extra that installs them.
KNOWN_COMMANDS = {"stack": ("the native local stack: up | down | status | logs ...", "testing")}


def _registered_commands() -> dict[str, EntryPoint]:
    """Subcommands registered in the `wotr.commands` entry point group, by name."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def _run_registered(name: str, entry: EntryPoint | None, argv: list[str]) -> int:
    """Run a registered subcommand; say in one line which extra to install when it is missing."""
    problem = "not installed"
    if entry is not None:
        try:
            command = entry.load()
        except ImportError as e:
            problem = f"cannot load {entry.value} ({e})"
        else:
            return command(argv)
    hint = f"; install the extra: pip install 'wotr[{KNOWN_COMMANDS[name][1]}]'" if name in KNOWN_COMMANDS else ""
    print(f"wotr {name}: {problem}{hint}", file=sys.stderr)
    return 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _parser(registered: dict[str, EntryPoint] | None = None) -> argparse.ArgumentParser:
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
    ingest.add_argument("-n", "--count", type=_positive, default=10, help="events to send (default %(default)s)")
    ingest.add_argument("--batch", type=_positive, default=0, metavar="N",
                        help="send through /ingest/batch in batches of N events (default: single events)")
    ingest.add_argument("-c", "--concurrency", type=_positive, default=8,
                        help="requests in flight at once (default %(default)s)")
    ingest.add_argument("--write-key", metavar="KEY", help="send this write key (X-Write-Key) when the API requires one")

    sub.add_parser("etl", help="raw JSON archive -> curated Parquet (PySpark); `wotr etl --help` for options",
                   add_help=False)

    sub.add_parser("replay", help="republish archived events of a date range, verified; `wotr replay --help`",
                   add_help=False)

    sub.add_parser("bench", help="measure every hop beside its ceiling (source checkout; `wotr bench --help`)",
                   add_help=False)

    sub.add_parser("keys", help="write keys of the ingest endpoints: create | list | revoke; `wotr keys --help`",
                   add_help=False)

    sub.add_parser("metadata", help="metadata table maintenance: prune --older-than DAYS; `wotr metadata --help`",
                   add_help=False)

    # Listed for the help only: main() hands them their arguments before parsing.
    for name in sorted({*KNOWN_COMMANDS, *(registered or {})}):
        text = KNOWN_COMMANDS[name][0] if name in KNOWN_COMMANDS else f"from {registered[name].value}"
        if registered is not None and name not in registered:
            text += f" (needs wotr[{KNOWN_COMMANDS[name][1]}])"
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark harness lives in the source checkout, beside src/
        root = Path(__file__).resolve().parents[2]
        if not (root / "bench" / "run.py").is_file():
            print("wotr bench: run it from a source checkout (bench/ not found next to src/)", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, "-m", "bench", *argv[1:]], cwd=root)
    if argv[:1] == ["replay"]:  # its own options (--since, --until, --source, --topic, --rate, --dry-run)
        from .replay_cli import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["keys"]:  # its own subcommands (create, list, revoke)
        from .keys_cli import main as keys_main

        return keys_main(argv[1:])
    if argv[:1] == ["metadata"]:  # its own subcommands (prune)
        from .metadata_cli import main as metadata_main

        return metadata_main(argv[1:])
    if argv[:1] == ["etl"]:  # the ETL parses its own options (--date, --since, --history, --bench)
        from .etl.cli import main as etl_main

        return etl_main(argv[1:])
    command = argv[0] if argv else ""
    registered = None
    if command not in BUILTIN_COMMANDS:  # another package's subcommand, the help, or a mistake
        registered = _registered_commands()
        if command in registered or command in KNOWN_COMMANDS:
            return _run_registered(command, registered.get(command), argv[1:])
    args = _parser(registered).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "ingest":
        from .sample import send_samples

        return send_samples(args.url, args.count, args.batch, args.concurrency, write_key=args.write_key)
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
    from .runners import run_until_signalled, serve, tune_gc
    from .settings import Settings

    settings = Settings.from_env()
    if args.command == "serve":
        container = build_container(settings, role="serve", with_workers=args.workers)
        tune_gc()
        return serve(container)  # 70: a worker crashed
    if args.command == "consume" and settings.consumer_nice:
        # Before any thread exists (threads inherit it): the loader gives way to the API on
        # shared cores; alone it runs at full speed (a priority only matters under contention).
        os.nice(settings.consumer_nice)
    container = build_container(settings, role=args.command)
    port = args.metrics_port if args.metrics_port is not None else (settings.metrics_port or METRICS_PORTS[args.command])
    if args.command == "consume":
        tune_gc()
    return run_until_signalled(container, metrics_port=port, ready_file=args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
