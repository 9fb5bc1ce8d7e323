"""The wotr API under uvicorn with several worker processes, served as `wotr serve` serves it.

`wotr serve` hands uvicorn an application object, which runs one process only. Here the
same application is built by a factory in each worker (the container's app, as
`wotr serve --api-only` serves it), with the same server settings as `wotr serve`
(`wotr_apps.api.server.build_server`): uvicorn with wotr's hardened httptools protocol
(header limits and read timeouts from the WOTR_* variables), the access log as
WOTR_ACCESS_LOG says (off by default), uvloop. Each worker gets its own in-process
ClickHouse engine directory, because the engine locks its directory.

    python -m bench.server --workers 2 --chdb-dir /tmp/x    (WOTR_* and service variables from the env)
"""

from __future__ import annotations

import argparse
import os


def _protocol() -> type:
    """wotr's protocol class bound to the limits of the WOTR_* variables; importable by name
    (`bench.server:HttpProtocol`), so uvicorn's spawned workers load it themselves."""
    from wotr_apps.api.server import EdgeLimits, http_protocol
    from wotr_apps.settings import Settings

    cls = http_protocol(EdgeLimits.from_settings(Settings.from_env()))
    cls.__module__, cls.__qualname__ = __name__, "HttpProtocol"
    return cls


HttpProtocol = _protocol()


def app():
    base = os.environ["WOTR_BENCH_CHDB_DIR"]
    os.environ["CLICKHOUSE_DSN"] = f"chdb://{base}/worker-{os.getpid()}"

    from wotr_apps.container import build_container
    from wotr_apps.runners import tune_gc

    app = build_container(with_workers=False).app()
    tune_gc()  # as `wotr serve` does
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from wotr_apps.settings import Settings

    p = argparse.ArgumentParser(prog="python -m bench.server")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chdb-dir", required=True)
    p.add_argument("--access-log", dest="access_log", action="store_true", default=None,
                   help="log every request (default: WOTR_ACCESS_LOG, off unless set)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    os.environ["WOTR_BENCH_CHDB_DIR"] = args.chdb_dir
    if settings.host != "127.0.0.1":
        p.error("the benchmark server binds 127.0.0.1 only")
    uvicorn.run(
        "bench.server:app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        http="bench.server:HttpProtocol",
        log_level="info",
        access_log=settings.access_log if args.access_log is None else args.access_log,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.keep_alive_seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
