"""The wotr API under uvicorn with several worker processes, or without the access log.

`wotr serve` hands uvicorn an application object, which runs one process only. Here the
same application is built by a factory in each worker (the container's app, as
`wotr serve --api-only` serves it), and each worker gets its own in-process ClickHouse
engine directory, because the engine locks its directory.

    python -m bench.server --workers 2 --chdb-dir /tmp/x    (WOTR_* and service variables from the env)
"""

from __future__ import annotations

import argparse
import os


def app():
    base = os.environ["WOTR_BENCH_CHDB_DIR"]
    os.environ["CLICKHOUSE_DSN"] = f"chdb://{base}/worker-{os.getpid()}"

    from wotr_apps.container import build_container

    return build_container(with_workers=False).app()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.server")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chdb-dir", required=True)
    p.add_argument("--no-access-log", dest="access_log", action="store_false")
    args = p.parse_args(argv)
    os.environ["WOTR_BENCH_CHDB_DIR"] = args.chdb_dir
    host = os.environ.get("WOTR_HOST", "127.0.0.1")
    if host != "127.0.0.1":
        p.error("the benchmark server binds 127.0.0.1 only")
    uvicorn.run(
        "bench.server:app",
        factory=True,
        host=host,
        port=int(os.environ["WOTR_PORT"]),
        workers=args.workers,
        log_level="info",
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
