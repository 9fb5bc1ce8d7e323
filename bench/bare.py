"""The bare framework: the ceiling of wotr's HTTP hop, measured in the same run.

A minimal Litestar + msgspec application with wotr's two hot routes and no I/O:
`POST /ingest` reads the body, decodes it with msgspec into a struct of the event's
shape and answers 202 with a small receipt; `GET /health` answers `{"status":"ok"}`.
Served the way `wotr serve` serves wotr: uvicorn with its httptools parser and uvloop,
access log off, one process (or `--workers N` processes sharing the socket, as
`bench/server.py` does for wotr). wotr's own hardened protocol (header limits, read
timeouts) and its middleware are not here: they are part of what wotr costs.

    WOTR_PORT=8100 python -m bench.bare [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import msgspec
from litestar import Litestar, Request, get, post


class Event(msgspec.Struct, forbid_unknown_fields=False):
    """What `POST /ingest` takes (wotr's IngestRequest, loosely)."""

    payload: dict[str, Any]
    id: str | None = None
    source: str | None = None
    type: str | None = None
    timestamp: str | None = None


class Receipt(msgspec.Struct):
    id: str
    status: str = "accepted"
    duplicate: bool = False


_decode = msgspec.json.Decoder(Event).decode
_ids = itertools.count()
_prefix = f"{os.getpid():08x}"


@post("/ingest", status_code=202)
async def ingest(request: Request) -> Receipt:
    event = _decode(await request.body())
    return Receipt(id=event.id or f"{_prefix}-{next(_ids):016x}")


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def app() -> Litestar:
    return Litestar(route_handlers=[ingest, health], openapi_config=None)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    host = os.environ.get("WOTR_HOST", "127.0.0.1")
    if host != "127.0.0.1":
        p.error("the benchmark server binds 127.0.0.1 only")
    uvicorn.run("bench.bare:app", factory=True, host=host, port=int(os.environ["WOTR_PORT"]), workers=args.workers,
                http="httptools", loop="auto", log_level="info", access_log=False, timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
