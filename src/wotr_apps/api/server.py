"""The HTTP server: uvicorn with its httptools parser, hardened at the connection.

uvicorn bounds neither the header section nor the time a client may take to send it or
its body: 300,000 headers (9.8 MB) were read into memory, and a request whose headers or
body stopped half way held its connection (and the buffered bytes) for ever. The protocol
here adds, per connection:

- at most `max_headers` header fields and `max_header_bytes` bytes of request target and
  header fields, checked as the bytes arrive: 431 and close;
- a header read timeout, from a request's first byte (or the connection's start) until its
  headers are complete: 408 and close (a connection that sent nothing is just closed);
- a body read timeout, the longest a request body may go without a byte: 408 and close
  (or only close when an answer is already out).

While the API sheds load (`edge.Admission`), a `POST /ingest` it refuses is answered 503
right here, as its headers complete: no ASGI request cycle, no task, its body skipped as it
is parsed, the connection kept alive. A refusal then costs the event loop the parse and
one write, a small part of a served request, so refusing stays fast when the offered load
is several times what the API can take (shed requests are counted by
`wotr_ingest_total{outcome="shed"}`; they never reach the HTTP metrics middleware).

uvicorn's keep-alive timeout (`WOTR_KEEP_ALIVE_SECONDS`) still closes idle connections
between requests. The cost per
request is a clock read and a few attribute stores and comparisons: the one timer of a
connection is armed at most once per timeout period, not per request, and the header
fields are measured one by one only when the chunks they came in exceed the byte limit.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from asyncio import TimerHandle
from dataclasses import dataclass
from time import monotonic
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from wotr_domain.errors import Overloaded

from ..settings import Settings
from .edge import ADMITTED, admission_on, refusal_body

__all__ = ["EdgeLimits", "HardenedHttpToolsProtocol", "build_server", "http_protocol", "run_server"]

log = logging.getLogger(__name__)

# What a connection is reading.
_WAITING = 0  # nothing yet: a fresh connection before its first byte
_HEADERS = 1  # a request's line and header fields
_BODY = 2  # a request's body
_IDLE = 3  # nothing: the request is in (uvicorn's keep-alive timeout takes over)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    header_read_timeout: float = 10.0
    body_read_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_headers=settings.max_headers,
            max_header_bytes=settings.max_header_bytes,
            header_read_timeout=settings.header_read_timeout_seconds,
            body_read_timeout=settings.body_read_timeout_seconds,
        )


# The 503 answers built so far: (reason, retry after, keep alive) -> (default headers, bytes).
_REFUSALS: dict[tuple[str, float, bool], tuple[list[tuple[bytes, bytes]], bytes]] = {}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is already chosen."""


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits and read timeouts (see the module)."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()
    # The limits as plain class attributes (one lookup each on the per-request path).
    _max_headers: ClassVar[int] = limits.max_headers
    _max_header_bytes: ClassVar[int] = limits.max_header_bytes
    _header_timeout: ClassVar[float] = limits.header_read_timeout
    _body_timeout: ClassVar[float] = limits.body_read_timeout
    _body_sooner: ClassVar[bool] = False  # a body's deadline can come before its headers' one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _WAITING
        # One timer per connection, not per request: it is armed when a request begins and
        # none is pending, and when it fires it checks the deadline of what is being read
        # (re-arming itself for the rest, or doing nothing once the request is in).
        self._timer: TimerHandle | None = None
        self._deadline = 0.0  # loop time by which the request line and headers must be in
        self._last_read = 0.0  # loop time of the last chunk read while in the body
        self._chunk = 0  # length of the chunk being parsed
        self._began = False  # a request began in that chunk
        self._header_chunks = 0  # bytes of the chunks this request's headers came in so far
        self._whole_header_chunks = 0  # ... of those that were header bytes from end to end
        self._refusal: tuple[int, str, str] | None = None
        self._skipping = False  # the body of a request refused as its headers completed
        self._skip_keep_alive = True  # ... and whether its connection stays open after it

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.time() + self._header_timeout
        self._timer = self.loop.call_later(self._header_timeout, self._read_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timer()
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._chunk = len(data)
        self._began = False
        was_reading_headers = self._phase == _HEADERS
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse_and_close(*self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        phase = self._phase
        if phase == _BODY:
            self._last_read = self.loop.time()
        elif phase == _HEADERS:  # the headers are still coming: check what arrived so far
            self._header_chunks += len(data)
            if was_reading_headers and not self._began:  # all of it belongs to these headers
                self._whole_header_chunks += len(data)
            refusal = self._header_refusal(complete=False)
            if refusal is not None:
                self._refuse_and_close(*refusal)

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS
        self._began = True
        self._header_chunks = self._whole_header_chunks = 0
        self._deadline = self.loop.time() + self._header_timeout
        if self._timer is None:  # else it fires sooner, and re-arms itself for the rest
            self._timer = self.loop.call_later(self._header_timeout, self._read_timed_out)

    def on_headers_complete(self) -> None:
        if len(self.headers) > self._max_headers or self._header_chunks + self._chunk > self._max_header_bytes:
            refusal = self._header_refusal(complete=True)  # measured only now
            if refusal is not None:
                self._refusal = refusal
                raise _Refused  # stops the parser before a request cycle exists
        self._phase = _BODY
        if self._body_sooner:  # the pending timer may fire too late for the body
            timer = self._timer
            if timer is None or timer.when() > self.loop.time() + self._body_timeout:
                self._cancel_timer()
                self._timer = self.loop.call_later(self._body_timeout, self._read_timed_out)
        if self._shed_at_once():
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._skipping:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE  # the pending timer, if any, will find nothing to do
        if self._skipping:  # the refused request's body is read: the connection is free again
            self._skipping = False
            if self._skip_keep_alive:
                self.on_response_complete()  # uvicorn's own: the keep-alive timer, the next request
            else:
                self.transport.close()
            return
        super().on_message_complete()

    # -- load shedding -------------------------------------------------------------------

    def _shed_at_once(self) -> bool:
        """Answer 503 now if the application's admission refuses this request (see the
        module); True when it did. A request behind another one still in flight on this
        connection (pipelined) is left to the application's own check, in its turn."""
        admission = admission_on(self.loop)
        if admission is None or self.parser.get_method() != b"POST" or self.parser.should_upgrade():
            return False  # an upgrade leaves this protocol: the application admits it, if at all
        if self.url.partition(b"?")[0] not in admission.raw_paths:
            return False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False
        reason = admission.admit()
        if reason is None:
            self.scope[ADMITTED] = monotonic()  # type: ignore[literal-required]  # served; its sojourn begins
            return False
        # A client waiting for "100 Continue" may never send the body: close after the answer.
        keep_alive = self.parser.should_keep_alive() and not self.expect_100_continue
        self.transport.write(self._refusal_bytes(reason, admission.retry_after, keep_alive))
        self._skipping, self._skip_keep_alive = True, keep_alive
        if self.expect_100_continue:
            self._cancel_timer()
            self.transport.close()
        return True

    def _refusal_bytes(self, reason: str, retry_after: float, keep_alive: bool) -> bytes:
        """The whole 503 answer, built once per reason and per second (the server's default
        headers, its Date among them, change once a second): under overload most requests
        get it, and building it anew each time was a measurable part of a refusal."""
        headers = self.server_state.default_headers
        key = (reason, retry_after, keep_alive)
        cached = _REFUSALS.get(key)
        if cached is not None and cached[0] is headers:
            return cached[1]
        body, retry = refusal_body(Overloaded("api", reason, retry_after=retry_after))
        content = [STATUS_LINE[503]]
        for name, value in headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/json\r\n",
            b"retry-after: " + retry + b"\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        ])
        if len(_REFUSALS) >= 64:  # a handful of reasons in practice; never a leak
            _REFUSALS.clear()
        answer = _REFUSALS[key] = (headers, b"".join(content))
        return answer[1]

    # -- limits ----------------------------------------------------------------------------

    def _header_refusal(self, *, complete: bool) -> tuple[int, str, str] | None:
        if len(self.headers) > self._max_headers:
            return 431, "request_header_fields_too_large", f"more than {self._max_headers} header fields"
        # The chunks bound the header bytes from above (they may hold a previous request's
        # tail or this one's body); only past the limit are the fields measured.
        limit = self._max_header_bytes
        upper = self._header_chunks + (self._chunk if complete else 0)
        if upper > limit and (self._whole_header_chunks > limit or self._header_bytes() > limit):
            return 431, "request_header_fields_too_large", f"request target and header fields exceed {limit} bytes"
        return None

    def _header_bytes(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # -- timeouts --------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_timed_out(self) -> None:
        self._timer = None
        phase = self._phase
        if phase == _IDLE or self.transport.is_closing():
            return  # between requests uvicorn's keep-alive timeout rules
        now = self.loop.time()
        if phase == _BODY:
            if self.flow.read_paused:  # the application is not reading: not the client's fault
                self._last_read = now
            deadline = self._last_read + self._body_timeout
        else:
            deadline = self._deadline
        if now < deadline:
            self._timer = self.loop.call_later(deadline - now, self._read_timed_out)
        elif phase == _WAITING:  # connected and sent nothing: no request to answer
            self.transport.close()
        elif phase == _HEADERS:
            timeout = self._header_timeout
            self._refuse_and_close(408, "request_timeout", f"request headers incomplete after {timeout:g} s")
        else:  # (only closed if an answer went out already, e.g. a 415 before the body)
            timeout = self._body_timeout
            self._refuse_and_close(408, "request_timeout", f"request body sent nothing for {timeout:g} s")

    def _refuse_and_close(self, status: int, error: str, detail: str) -> None:
        """Answer `status` with the API's JSON error shape and close the connection.

        The answer is written only if no other is being written on this connection (a
        pipelined request's, or this request's own).
        """
        self.logger.warning("%s%d %s", "%s:%d - " % self.client if self.client else "", status, detail)
        cycle = self.cycle
        in_flight = cycle is not None and not cycle.response_complete
        if self._phase == _BODY:  # this request's cycle: answer unless it answered already
            may_answer = cycle is not None and not cycle.response_started
        else:  # headers: answer unless a pipelined request's answer is being written
            may_answer = not in_flight
        self._phase = _IDLE
        self._cancel_timer()
        if in_flight:
            cycle.disconnected = True  # the application's reads end; its answer goes nowhere
            cycle.message_event.set()
        if may_answer:
            body = json.dumps({"status_code": status, "error": error, "detail": detail}).encode()
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ])
            self.transport.write(b"".join(content))
        self.transport.close()


def http_protocol(limits: EdgeLimits) -> type[HardenedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, bound to `limits`."""
    return type(
        "WotrHttpProtocol",
        (HardenedHttpToolsProtocol,),
        {
            "limits": limits,
            "_max_headers": limits.max_headers,
            "_max_header_bytes": limits.max_header_bytes,
            "_header_timeout": limits.header_read_timeout,
            "_body_timeout": limits.body_read_timeout,
            "_body_sooner": limits.body_read_timeout < limits.header_read_timeout,
        },
    )


def build_server(app: Any, settings: Settings, **config: Any) -> uvicorn.Server:
    """A uvicorn server for `app` on the settings' address, with the hardened protocol."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "http": http_protocol(EdgeLimits.from_settings(settings)),
    }
    options.update(config)
    return uvicorn.Server(uvicorn.Config(app, **options))


# Sockets listening on the server's port together: the event loop accepts one connection per
# listening socket per turn (libuv, under uvloop, makes one accept() per readiness), so with
# one socket a loop busy with requests accepted about 250 connections a second and, under
# load, new connections waited seconds in the kernel's queue. The kernel spreads new
# connections over the sockets (SO_REUSEPORT).
ACCEPTORS = 16


def listening_sockets(host: str, port: int, *, count: int = ACCEPTORS, backlog: int = 2048) -> list[socket.socket]:
    """`count` sockets listening on `host`:`port` together (one where SO_REUSEPORT does not
    exist). The port is first bound alone, so a port already in use fails as it would for
    one socket (EADDRINUSE) instead of being shared with another process; port 0 picks one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)  # OSError (address in use) if anything listens there
        address = probe.getsockname()
    if not hasattr(socket, "SO_REUSEPORT"):
        count = 1
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def run_server(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    """Run until a signal stops it, as `uvicorn.run` does; exit 3 if it could not start.
    Without `sockets`, it listens on the configuration's address with `listening_sockets`."""
    if sockets is None:
        config = server.config
        try:
            sockets = listening_sockets(config.host, config.port, backlog=config.backlog)
        except OSError as e:
            print(f"wotr: cannot listen on {config.host}:{config.port}: {e}", file=sys.stderr)
            sys.exit(3)  # uvicorn's STARTUP_FAILURE
        # uvicorn names the address only when it binds the socket itself.
        host, port = sockets[0].getsockname()[:2]
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on http://%s:%d (%d listening sockets; press CTRL+C to quit)",
            f"[{host}]" if ":" in host else host, port, len(sockets))
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE
