"""The read-only SQL endpoint of the process that owns the analytics engine.

The in-process ClickHouse engine locks its directory: only the process that loads the
rows (`wotr consume`, or `wotr serve` with the consumer in-process) can read them. That
process serves them over the ClickHouse HTTP interface, on loopback: `GET` or `POST /`
with `query` (or the statement as the body) and the output in the query's `FORMAT`
(default TabSeparated), `GET /ping`. ClickHouse clients that speak HTTP (clickhouse-connect,
curl, JDBC/DBeaver) query it as they query a server; the API's `/analytics/latest` on the
local profile reads through it too. Only reading statements are served; SELECTs see each
event once (the session runs with `final = 1`), so the seed's query is right as written.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import anyio.to_thread
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.di import Provide

from wotr_domain.errors import Refused, WotrError

__all__ = ["SqlServer"]

log = logging.getLogger(__name__)


async def _statement(request: Request) -> tuple[str, str, dict[str, str]]:
    """The statement, its default output format, and its `{name:Type}` parameters (`param_name=`)."""
    params = request.query_params
    bound = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
    body = (await request.body()).decode("utf-8", "replace")
    query = params.get("query") or ""
    if body.strip():
        query = f"{query} {body}".strip() if query else body  # ClickHouse: the body continues the query
    return query, params.get("default_format") or "TabSeparated", bound


def _answer(sink: Any, query: str, default_format: str, parameters: dict[str, str]) -> Response:
    if not query.strip():
        return Response("Code: 62. Empty query. (SYNTAX_ERROR)\n", status_code=400, media_type=MediaType.TEXT)
    try:
        out = sink.sql(query, default_format, parameters)
    except Refused as e:
        return Response(f"{e.detail}\n", status_code=400, media_type=MediaType.TEXT)
    except WotrError as e:
        return Response(f"{e}\n", status_code=503, media_type=MediaType.TEXT)
    return Response(out, media_type="application/octet-stream", headers={"X-ClickHouse-Timezone": "UTC"})


@get("/")
async def query_get(request: Request, sink: Any) -> Response:
    query, fmt, parameters = await _statement(request)
    return await anyio.to_thread.run_sync(_answer, sink, query, fmt, parameters)


@post("/", status_code=200)
async def query_post(request: Request, sink: Any) -> Response:
    query, fmt, parameters = await _statement(request)
    return await anyio.to_thread.run_sync(_answer, sink, query, fmt, parameters)


@get("/ping", media_type=MediaType.TEXT)
async def ping() -> str:
    return "Ok.\n"


class SqlServer:
    """Serves `sink.sql` on host:port in a thread of its own (uvicorn)."""

    def __init__(self, sink: Any, host: str, port: int) -> None:
        import uvicorn

        app = Litestar(route_handlers=[query_get, query_post, ping],
                       dependencies={"sink": Provide(lambda: sink, sync_to_thread=False)}, openapi_config=None)
        self.host, self.port = host, port
        self._sink = sink
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                     access_log=False, lifespan="off"))
        self._server.install_signal_handlers = lambda: None  # the process's own handlers stay
        self._thread = threading.Thread(target=self._server.run, name="wotr-sql", daemon=True)

    def start(self) -> bool:
        """Start serving; False (and a warning) when the port is taken: loading goes on."""
        self._sink.serve_reads()
        with socket.socket() as probe:
            try:
                probe.bind((self.host, self.port))
            except OSError as e:
                log.warning("SQL endpoint not served on %s:%d: %s", self.host, self.port, e)
                return False
        self._thread.start()
        log.info("SQL endpoint (ClickHouse HTTP interface, read-only) on http://%s:%d", self.host, self.port)
        return True

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
