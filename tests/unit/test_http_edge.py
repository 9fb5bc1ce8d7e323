"""The HTTP edge: nesting depth, content encodings, body limits while reading, and the
server's header limits and read timeouts.

The codec and the endpoints are driven directly and through Litestar's test client; the
server-level behaviour through a real uvicorn server on 127.0.0.1 (an ephemeral port),
spoken to with raw sockets. Every wait is bounded by a socket timeout.
"""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from litestar.testing import TestClient

from wotr_adapters.memory import InMemoryAnalyticsSink, InMemoryEventBus
from serving import uvicorn_serving

from wotr_apps.api.errors import BodyTooLarge
from wotr_apps.api.ingest import inflate
from wotr_apps.api.server import HardenedHttpToolsProtocol, build_server
from wotr_apps.container import build_container
from wotr_apps.settings import Settings
from wotr_domain.codec import MAX_DEPTH, decode_event, decode_request, decode_requests, nesting_exceeds
from wotr_domain.errors import InvalidEvent, MalformedJson
from wotr_domain.models import BusMessage
from wotr_domain.services import AnalyticsLoader

pytestmark = pytest.mark.timeout(120)


def nested(levels: int, leaf: str = "1") -> str:
    """A payload object `levels` deep (the payload object itself is level 1)."""
    return '{"a":' * (levels - 1) + "{" + (f'"leaf":{leaf}' if leaf else "") + "}" + "}" * (levels - 1)


def request_body(levels: int) -> bytes:
    return ('{"payload":' + nested(levels) + "}").encode()


def depth_of(value: object) -> int:
    """Reference depth, walked iteratively."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((child, d + 1) for child in (v.values() if isinstance(v, dict) else v))
    return deepest


# -- nesting depth: the codec -------------------------------------------------------------


def test_the_depth_measure_is_exact_whatever_the_strings_hold():
    tricky = ['a', "[[{{", "]]}}", 'q"uote', "back\\slash\\", '\\"]', "}{][", ""]
    values = []
    for levels in range(1, 12):
        values.append(json.loads(nested(levels)))
        values.append({"s": tricky, "deep": json.loads(nested(levels)), "wide": [{"x": [t]} for t in tricky]})
        values.append([[t, {"k": [t] * levels}] for t in tricky])
    for value in values:
        text = json.dumps(value).encode()
        depth = depth_of(value)
        for limit in range(0, 16):
            assert nesting_exceeds(text, limit) == (depth > limit), (text, limit, depth)


def test_an_unterminated_or_unbalanced_body_is_bounded_from_above():
    assert nesting_exceeds(b"[" * 100, 64) and not nesting_exceeds(b"[" * 64, 64)
    assert not nesting_exceeds(b'{"a":"' + b"[" * 100, 64)  # inside a string that never ends
    assert not nesting_exceeds(b"]" * 100 + b"[" * 10, 64)


def test_decode_request_accepts_the_limit_and_refuses_one_level_more():
    assert depth_of(decode_request(request_body(MAX_DEPTH)).payload) == MAX_DEPTH
    for levels in (MAX_DEPTH + 1, 1_000, 100_000):
        with pytest.raises(InvalidEvent) as info:
            decode_request(request_body(levels))
        assert info.value.field == "payload" and str(MAX_DEPTH) in info.value.message


def test_no_recursion_error_escapes_any_decoder():
    bodies = [b"[" * 100_000, b"{" * 100_000, b'{"payload":' + b"[" * 100_000, request_body(100_000)]
    for body in bodies:
        for decode in (decode_request, decode_event):
            with pytest.raises(InvalidEvent):
                decode(body)
    with pytest.raises(MalformedJson):
        decode_requests(b"[" * 100_000)
    with pytest.raises(MalformedJson):
        decode_requests(b"[" + request_body(100_000) + b",,{}]")


def test_a_batch_array_splits_around_an_absurdly_deep_item():
    items = [b'{"payload":{"n":1}}', request_body(100_000), b' {"payload":{"s":"],[{"}} ']
    raw = decode_requests(b" [" + b", ".join(items) + b"]\n")
    assert [bytes(r) for r in raw] == [i.strip() for i in items]
    decoded = []
    for r in raw:
        try:
            decoded.append(decode_request(r))
        except InvalidEvent as e:
            decoded.append(e)
    assert decoded[0].payload == {"n": 1} and decoded[2].payload == {"s": "],[{"}
    assert isinstance(decoded[1], InvalidEvent) and decoded[1].field == "payload"


def test_decode_event_has_the_same_limit_and_the_consumer_dead_letters_it():
    event = b'{"id":"e-1","received_at":"2026-05-17T00:00:00Z","payload":%s}'
    assert decode_event(event % nested(MAX_DEPTH).encode()).id == "e-1"
    with pytest.raises(InvalidEvent) as info:
        decode_event(event % nested(MAX_DEPTH + 1).encode())
    assert info.value.field == "payload"

    bus, sink = InMemoryEventBus(), InMemoryAnalyticsSink()
    loader = AnalyticsLoader(bus.subscribe("analytics"), sink)
    bus.publish([
        BusMessage(key="e-1", value=event % nested(3).encode()),
        BusMessage(key="e-1", value=event % nested(50_000).encode()),
    ])
    outcome = loader.run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (1, 1)
    assert str(MAX_DEPTH) in bus.dead_letters()[0].headers["dlq-reason"]


# -- nesting depth, encodings and limits at the endpoints -----------------------------------


@pytest.fixture
def container():
    return build_container(Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_MAX_BODY_BYTES": "16384",
                                              "WOTR_MAX_BATCH_BYTES": "65536"}), with_workers=False)


@pytest.fixture
def client(container):
    with TestClient(container.app()) as c:
        yield c


def nothing_written(container) -> bool:
    return (
        list(container.object_store().list()) == []
        and container.metadata_repo().count() == 0
        and container.event_bus().messages() == []
    )


JSON = {"content-type": "application/json"}


def test_a_deeply_nested_event_is_422_naming_the_limit_and_writes_nothing(client, container):
    for levels in (MAX_DEPTH + 1, 1_000):
        r = client.post("/ingest", content=request_body(levels), headers=JSON)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_event" and r.json()["field"] == "payload"
        assert str(MAX_DEPTH) in r.json()["detail"]
    assert nothing_written(container)
    assert client.post("/ingest", content=request_body(MAX_DEPTH), headers=JSON).status_code == 202


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_a_deep_item_fails_alone_in_a_batch(levels):
    deep = request_body(levels)
    body = b"[" + b",".join([b'{"payload":{"n":1}}', deep, b'{"payload":{"n":2}}']) + b"]"
    app_container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)  # 16 MiB batches
    with TestClient(app_container.app()) as c:
        r = c.post("/ingest/batch", content=body, headers=JSON)
        assert r.status_code == 207, r.text
        results = r.json()["results"]
        assert [x.get("error") is None for x in results] == [True, False, True]
        assert results[1]["field"] == "payload" and str(MAX_DEPTH) in results[1]["error"]
        assert app_container.metadata_repo().count() == 2
        ndjson = b"\n".join([b'{"payload":{"n":3}}', deep])
        r = c.post("/ingest/batch", content=ndjson, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 207 and r.json()["results"][1]["field"] == "payload"


EVENT = json.dumps({"payload": {"example": "hello", "text": "x" * 200}}).encode()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(EVENT)),
        ("x-gzip", gzip.compress(EVENT)),
        ("GZip", gzip.compress(EVENT[:40]) + gzip.compress(EVENT[40:])),  # two members
        ("deflate", zlib.compress(EVENT)),
        ("deflate", zlib.compress(EVENT)[2:-4]),  # raw deflate, as some clients send it
        ("identity", EVENT),
        ("gzip, identity", gzip.compress(EVENT)),
    ],
    ids=["gzip", "x-gzip", "gzip-two-members", "deflate-zlib", "deflate-raw", "identity", "gzip-identity"],
)
def test_gzip_and_deflate_bodies_are_decoded(client, container, coding, encoded):
    r = client.post("/ingest", content=encoded, headers=JSON | {"content-encoding": coding})
    assert r.status_code == 202, r.text
    stored = json.loads(container.object_store().get(r.json()["object_key"]))
    assert stored["payload"] == json.loads(EVENT)["payload"]


def test_a_compressed_batch_is_decoded(client, container):
    batch = b"\n".join([EVENT, EVENT, request_body(1_000)])
    r = client.post("/ingest/batch", content=gzip.compress(batch),
                    headers={"content-type": "application/x-ndjson", "content-encoding": "gzip"})
    assert r.status_code == 207 and r.json()["accepted"] == 2


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "no-such-coding", "gzip, gzip", "deflate, gzip"])
@pytest.mark.parametrize("path", ["/ingest", "/ingest/batch"])
def test_another_content_coding_is_415_naming_it_and_writes_nothing(client, container, coding, path):
    r = client.post(path, content=EVENT, headers=JSON | {"content-encoding": coding})
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_content_encoding" and coding in r.json()["detail"]
    assert r.headers["accept-encoding"] == "gzip, deflate"
    assert nothing_written(container)


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", b"this is not gzip"),
        ("gzip", gzip.compress(EVENT)[:-12]),  # truncated
        ("gzip", gzip.compress(EVENT) + b"trailing garbage"),
        ("deflate", b"\x00\x01 not deflate at all"),
        ("deflate", zlib.compress(EVENT) + b"more"),
        ("gzip", b""),
    ],
    ids=["not-gzip", "truncated", "trailing-garbage", "not-deflate", "deflate-trailing", "empty"],
)
def test_a_corrupt_compressed_body_is_400_and_writes_nothing(client, container, coding, encoded):
    r = client.post("/ingest", content=encoded, headers=JSON | {"content-encoding": coding})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "corrupt_body" and coding in r.json()["detail"]
    assert nothing_written(container)


def test_the_limit_applies_to_the_decoded_size(client, container):
    big = json.dumps({"payload": {"x": "y" * 1_000_000}}).encode()
    bomb = gzip.compress(big)
    assert len(bomb) < 16384  # well within the wire limit
    r = client.post("/ingest", content=bomb, headers=JSON | {"content-encoding": "gzip"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert r.json()["detail"] == "the gzip-decoded body exceeds the limit of 16384 bytes"
    r = client.post("/ingest/batch", content=zlib.compress(big), headers=JSON | {"content-encoding": "deflate"})
    assert r.status_code == 413 and "65536" in r.json()["detail"]
    assert nothing_written(container)


def test_a_zip_bomb_never_inflates_past_the_limit():
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()  # 256 MiB inflated
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            inflate(bomb, "gzip", 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # a few MiB at most, not 256
    assert inflate(gzip.compress(b"x" * (1 << 20)), "gzip", 1 << 20) == b"x" * (1 << 20)  # the limit itself is fine


def test_the_content_length_precheck_still_answers_413_and_asks_to_close(client, container):
    r = client.post("/ingest", content=b"{" + b" " * 20_000 + b"}", headers=JSON)
    assert r.status_code == 413 and r.headers["connection"] == "close"
    assert nothing_written(container)


# -- the real server ----------------------------------------------------------------------


SERVER_ENV = {
    "WOTR_PROFILE": "memory",
    "WOTR_MAX_BODY_BYTES": "2048",
    "WOTR_HEADER_READ_TIMEOUT_SECONDS": "1",
    "WOTR_BODY_READ_TIMEOUT_SECONDS": "1",
}


class Running:
    def __init__(self, port: int, container) -> None:
        self.port = port
        self.container = container

    def talk(self, data: bytes, *, timeout: float = 10.0) -> bytes:
        """Send `data`, then read until the server closes (or `timeout`: then b"<open>" ends it)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            try:
                s.sendall(data)
            except OSError:  # closed on us before we finished: what did it answer?
                pass
            return read_to_close(s)


def read_to_close(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        return out + b"<open>"
    except OSError:  # reset after the answer
        pass
    return out


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def json_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.fixture(scope="module")
def server():
    container = build_container(Settings.from_env(SERVER_ENV), with_workers=False)
    with uvicorn_serving(container) as port:
        yield Running(port, container)


def counts(container) -> tuple[int, int]:
    return container.metadata_repo().count(), len(list(container.object_store().list()))


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), len(body), extra)) + body


def test_the_server_uses_the_hardened_protocol_with_the_settings_limits():
    settings = Settings.from_env({"WOTR_MAX_HEADERS": "40", "WOTR_MAX_HEADER_BYTES": "4096",
                                  "WOTR_HEADER_READ_TIMEOUT_SECONDS": "2.5", "WOTR_BODY_READ_TIMEOUT_SECONDS": "7"})
    protocol = build_server(object(), settings).config.http
    assert issubclass(protocol, HardenedHttpToolsProtocol)
    limits = protocol.limits
    assert (limits.max_headers, limits.max_header_bytes, limits.header_read_timeout, limits.body_read_timeout) == (40, 4096, 2.5, 7.0)


def test_idle_connections_stay_open_longer_than_common_client_idle_timeouts():
    """A server closing an idle connection just as its client sends on it resets that
    request: the server's keep-alive must outlast the clients' (60 s is common)."""
    assert build_server(object(), Settings.from_env({})).config.timeout_keep_alive == 75
    assert build_server(object(), Settings.from_env({"WOTR_KEEP_ALIVE_SECONDS": "5"})).config.timeout_keep_alive == 5


def test_normal_requests_keep_alive_and_pipeline(server):
    before = counts(server.container)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(post("/ingest", b'{"payload":{"n":1}}'))
        first = s.recv(65536)
        assert status_of(first) == 202
        time.sleep(1.5)  # idle past the header timeout: the keep-alive connection stays up
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" + post("/ingest", b'{"payload":{"n":2}}', b"Connection: close\r\n"))
        rest = read_to_close(s)
    assert rest.count(b"HTTP/1.1 200 OK") == 1 and rest.count(b"HTTP/1.1 202 Accepted") == 1
    after = counts(server.container)
    assert after[0] == before[0] + 2


def test_300_headers_are_431_and_the_connection_closes(server):
    request = b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n"
    response = server.talk(request)
    assert status_of(response) == 431 and not response.endswith(b"<open>")
    assert json_of(response)["error"] == "request_header_fields_too_large"


def test_oversized_headers_are_431_and_300000_headers_are_cut_off(server):
    response = server.talk(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status_of(response) == 431 and "65536" in json_of(response)["detail"]
    flood = b"POST /ingest HTTP/1.1\r\nHost: t\r\n" + b"X-H: 0123456789abcdef0123\r\n" * 300_000 + b"\r\n"
    response = server.talk(flood)  # 9.8 MB: the server answers and closes long before the end
    assert response == b"" or status_of(response) == 431
    assert not response.endswith(b"<open>")
    assert status_of(server.talk(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")) == 200


def test_headers_that_never_finish_are_closed_after_the_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"POST /ingest HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
        response = read_to_close(s)
        waited = time.monotonic() - started
    assert status_of(response) == 408 and not response.endswith(b"<open>")
    assert json_of(response)["error"] == "request_timeout"
    assert waited >= 0.5  # the timeout closed it, not something else


def test_the_header_timeout_runs_from_the_first_byte_not_from_the_last(server):
    """Headers trickled one line at a time never complete: the deadline still comes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        for i in range(50):  # a line every 0.2 s, for up to 10 s, until the server answers
            readable, _, _ = select.select([s], [], [], 0.2)
            if readable:
                break
            s.sendall(b"X-Slow-%d: v\r\n" % i)
        response = read_to_close(s)
    assert status_of(response) == 408
    assert i < 45  # cut off well before the trickle would have ended


def test_a_silent_connection_is_closed_without_an_answer(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        assert read_to_close(s) == b""


def test_a_body_that_stalls_half_way_is_408_and_writes_nothing(server):
    before = counts(server.container)
    body = json.dumps({"payload": {"text": "z" * 100}}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(post("/ingest", body)[: -len(body) // 2])
        response = read_to_close(s)
    assert status_of(response) == 408 and not response.endswith(b"<open>")
    assert json_of(response)["detail"].startswith("request body sent nothing")
    assert counts(server.container) == before
    # chunked, stalled between chunks
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /ingest/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(body) + 1, body + b"\n"))
        response = read_to_close(s)
    assert status_of(response) == 408
    assert counts(server.container) == before
    assert status_of(server.talk(post("/ingest", body, b"Connection: close\r\n"))) == 202


def test_the_endpoint_limit_applies_while_reading_a_chunked_body(server):
    """/ingest's 2 KiB limit, not the app-wide batch limit: 413 before the body ends."""
    before = counts(server.container)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /ingest HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"c00\r\n" + b" " * 0xC00 + b"\r\n")  # 3 KiB in, and the body never ends
        response = read_to_close(s)
    assert status_of(response) == 413 and not response.endswith(b"<open>")
    assert b"connection: close" in response.lower()
    assert json_of(response)["detail"] == "the request body exceeds the limit of 2048 bytes"
    assert counts(server.container) == before


def test_wotr_serve_applies_the_limits(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WOTR_PROFILE": "memory", "WOTR_PORT": str(port), "WOTR_MAX_HEADERS": "20"}
    proc = subprocess.Popen([sys.executable, "-m", "wotr_apps.cli", "serve", "--api-only"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "wotr serve did not start"
                time.sleep(0.1)
        running = Running(port, None)
        request = b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(30)) + b"\r\n"
        assert status_of(running.talk(request)) == 431
        assert status_of(running.talk(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_server_listens_on_several_sockets_of_one_port_and_a_port_in_use_fails():
    """`listening_sockets`: the event loop accepts one connection per listening socket per
    turn, so the server listens with several on its port; a port another process listens on
    is refused (EADDRINUSE), not shared."""
    from wotr_apps.api.server import ACCEPTORS, listening_sockets

    sockets = listening_sockets("127.0.0.1", 0)
    try:
        ports = {s.getsockname() for s in sockets}
        assert len(sockets) == ACCEPTORS > 1 and len(ports) == 1
        (address,) = ports
        clients = [socket.create_connection(address, timeout=5) for _ in range(4 * ACCEPTORS)]
        for c in clients:
            c.close()
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", address[1])
    finally:
        for s in sockets:
            s.close()
