"""`wotr stack up | down [--wipe] | start | stop | restart | status | logs | env`.

Reached three ways: `wotr stack ...` (wotr's CLI finds `main` through the `wotr.commands`
entry point this package registers), the `wotr-stack` console script (`console`), and
`python -m wotr_testing.stack`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from .process import StackError
from .stack import SERVICE_NAMES, Stack

__all__ = ["console", "main"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Run Kafka, an S3 server, PostgreSQL, Prometheus and Alertmanager natively on 127.0.0.1. "
        "State lives under $WOTR_STACK_HOME (default ~/.local/share/wotr-stack)."))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service = dict(nargs="*", metavar="SERVICE", help=f"any of: {', '.join(SERVICE_NAMES)} (default: all)")

    up = commands.add_parser("up", help="install what is missing, start what is not running, print the env")
    up.add_argument("services", **service)
    up.add_argument("--only", action="append", default=[], choices=SERVICE_NAMES, help="start only this service")
    up.add_argument("--timeout", type=float, help="seconds to wait for each service to become healthy")
    start = commands.add_parser("start", help="start the named services (same as up SERVICE...)")
    start.add_argument("services", nargs="+", metavar="SERVICE", choices=SERVICE_NAMES)
    start.add_argument("--timeout", type=float)
    restart = commands.add_parser("restart", help="stop, then start the named services")
    restart.add_argument("services", nargs="+", metavar="SERVICE", choices=SERVICE_NAMES)
    restart.add_argument("--timeout", type=float)

    down = commands.add_parser("down", help="stop what up started; data stays unless --wipe")
    down.add_argument("services", **service)
    down.add_argument("--wipe", action="store_true", help="also delete the services' data (not the cache)")
    stop = commands.add_parser("stop", help="stop the named services, keeping their data")
    stop.add_argument("services", nargs="+", metavar="SERVICE", choices=SERVICE_NAMES)

    commands.add_parser("status", help="state, pid, endpoint and health of each service; exit 1 if any is unhealthy")
    logs = commands.add_parser("logs", help="print the tail of the logs")
    logs.add_argument("service", nargs="?", choices=SERVICE_NAMES, metavar="SERVICE")
    logs.add_argument("-n", "--lines", type=int, default=40)
    commands.add_parser("env", help="print the export lines for the stack's endpoints (starts nothing)")
    return parser


def _print_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


def _status(stack: Stack) -> int:
    rows = stack.status()
    print(f"{'SERVICE':<13} {'STATE':<8} {'PID':<8} {'ENDPOINT':<22} HEALTH")
    for row in rows:
        state = "running" if row.running else "stopped"
        health = "healthy" if row.healthy else f"unhealthy ({row.detail})"
        if row.healthy and not row.running:
            health = f"healthy ({row.detail})"
        print(f"{row.name:<13} {state:<8} {row.pid or '-'!s:<8} {row.endpoint:<22} {health}")
    return 0 if all(row.healthy for row in rows) else 1


def main(argv: list[str] | None = None, *, prog: str = "wotr stack") -> int:
    args = _parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    try:
        stack = Stack()
        if args.command in {"up", "start", "restart"}:
            names = [*args.services, *getattr(args, "only", [])]
            began = time.monotonic()
            if args.command == "restart":
                stack.down(names)
            env = stack.up(names or None, timeout=args.timeout)
            print(f"# stack up in {time.monotonic() - began:.1f}s; also written to {stack.paths.env_file}",
                  file=sys.stderr)
            _print_env(env)
        elif args.command in {"down", "stop"}:
            stack.down(args.services or None, wipe=getattr(args, "wipe", False))
        elif args.command == "status":
            return _status(stack)
        elif args.command == "logs":
            print(stack.logs(args.service, args.lines))
        elif args.command == "env":
            _print_env(stack.env())
    except (StackError, OSError, ValueError) as exc:
        print(f"wotr stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def console() -> int:
    """The `wotr-stack` console script."""
    return main(sys.argv[1:], prog="wotr-stack")
