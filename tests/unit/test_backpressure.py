"""Backpressure: past the bound on waiting or in-flight work, ingest is refused at once
(`Overloaded`; the API: 503 + Retry-After) and counted as shed, never queued.

"At once" is checked without a clock: the refusals arrive while the flush in progress is
still held at its gate, so nothing was waited for.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

import httpx
import msgspec
import pytest
from dependency_injector import providers

from wotr_adapters.memory import InMemoryObjectStore
from serving import uvicorn_serving

from wotr_apps.container import build_container
from wotr_apps.settings import Settings
from wotr_domain.errors import Overloaded, Unavailable
from wotr_domain.models import IngestRequest, Receipt
from wotr_domain.services import GroupCommit
from wotr_domain.services.group_commit import InFlightLimit


class Gated:
    """The real `ingest_many`, held at a gate: a slow flush."""

    def __init__(self, ingest_many) -> None:
        self.ingest_many = ingest_many
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, items):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return self.ingest_many(items)


class Shed:
    def __init__(self) -> None:
        self.events = 0

    def shed(self, events: int) -> None:
        self.events += events


class GatedStore(InMemoryObjectStore):
    """An object store whose writes wait at a gate: every flush and batch is slow."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def put(self, key, data, content_type="application/json"):
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().put(key, data, content_type)


@asynccontextmanager
async def serving(app):
    """The app started (lifespan) and a client whose requests run concurrently on this loop
    (Litestar's AsyncTestClient handles one request at a time)."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wotr", timeout=10) as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan


async def until(event: threading.Event | Callable[[], bool]) -> None:
    ready = event.is_set if isinstance(event, threading.Event) else event
    for _ in range(500):
        if ready():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the flush never started")


# -- the domain policy -------------------------------------------------------------------------


def test_past_max_queued_submit_is_refused_at_once_and_counted(ingest, repo):
    gated, shed = Gated(ingest.ingest_many), Shed()

    async def scenario():
        commit = GroupCommit(gated, flushes=1, max_queued=3, max_wait=60, observer=shed)  # the count bound alone
        await commit.start()
        first = asyncio.create_task(commit.submit(IngestRequest(id="first", payload={})))
        await until(gated.entered)  # the only flush slot is held at the gate
        waiting = [asyncio.create_task(commit.submit(IngestRequest(id="w-0", payload={})))]
        await asyncio.sleep(0.05)  # the collector took it and waits for the slot
        assert commit.queued == 0
        waiting += [asyncio.create_task(commit.submit(IngestRequest(id=f"w-{i}", payload={}))) for i in range(1, 4)]
        await asyncio.sleep(0)
        assert commit.queued == 3  # full
        with pytest.raises(Overloaded) as refused:
            await commit.submit(IngestRequest(id="one-too-many", payload={}))
        assert not gated.gate.is_set()  # refused while the flush still holds: nothing was waited for
        gated.gate.set()
        answers = await asyncio.gather(first, *waiting)
        await commit.stop()
        return refused.value, answers

    refused, answers = asyncio.run(scenario())
    assert isinstance(refused, Unavailable) and refused.code == "overloaded" and refused.retry_after == 1.0
    assert "3 events are waiting" in str(refused)
    assert all(isinstance(a, Receipt) for a in answers)
    assert shed.events == 1
    assert repo.count() == 5 and "one-too-many" not in repo.rows  # the refused one wrote nothing


def test_the_queue_bound_must_be_positive():
    with pytest.raises(ValueError):
        GroupCommit(lambda items: [], max_queued=0)


def test_in_flight_limit_admits_up_to_its_bound_without_waiting():
    shed = Shed()
    limit = InFlightLimit(2, what="batches", observer=shed)
    with limit.admit(), limit.admit():
        assert limit.in_flight == 2
        with pytest.raises(Overloaded, match="2 batches in flight"):
            with limit.admit(events=1):
                pass
    assert limit.in_flight == 0 and shed.events == 1
    with limit.admit():  # free again once the work is done
        pass


# -- through the API ----------------------------------------------------------------------------


def _shed_metric(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("wotr_ingest_total{") and 'outcome="shed"' in line)


def test_the_api_sheds_single_events_with_503_and_retry_after_when_the_queue_is_full():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_INGEST_QUEUE_MAX": "2"}),
                                with_workers=False)
    gated = Gated(container.ingest_service().ingest_many)
    container.group_commit.override(providers.Singleton(
        GroupCommit, gated, flushes=1, max_queued=container.settings().ingest_queue_max, max_wait=60,
        observer=container.telemetry().ingest,
    ))

    async def scenario():
        async with serving(container.app()) as client:
            first = asyncio.create_task(client.post("/ingest", json={"payload": {"n": 0}}))
            await until(gated.entered)  # the only flush slot is held at the gate
            rest = [asyncio.create_task(client.post("/ingest", json={"payload": {"n": 1}}))]
            await asyncio.sleep(0.2)  # submitted, and taken by the collector, which waits for the slot
            assert container.group_commit().queued == 0 and not rest[0].done()
            rest += [asyncio.create_task(client.post("/ingest", json={"payload": {"n": i}})) for i in range(2, 7)]
            await asyncio.wait(rest, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.sleep(0.1)  # let every refusal out
            refused = [t.result() for t in rest if t.done()]
            held = not gated.gate.is_set()
            gated.gate.set()
            answers = [await first, *[await t for t in rest]]
            metrics = (await client.get("/metrics")).text
            return refused, held, answers, metrics

    refused, held, answers, metrics = asyncio.run(scenario())
    assert held and len(refused) == 3  # 1 flushing, 1 taken by the collector, 2 queued: 3 of 7 shed at once
    for r in refused:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"status_code": 503, "error": "overloaded",
                            "detail": "api is unavailable: 2 events are waiting to be written already"}
    assert sorted(r.status_code for r in answers) == [202] * 4 + [503] * 3
    assert container.metadata_repo().count() == 4
    assert _shed_metric(metrics) == 3


def test_the_api_sheds_batches_past_the_in_flight_bound_before_reading_them():
    container = build_container(
        Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_BATCHES_IN_FLIGHT_MAX": "1"}), with_workers=False)
    store = GatedStore()
    container.object_store.override(providers.Object(store))

    async def scenario():
        async with serving(container.app()) as client:
            first = asyncio.create_task(client.post("/ingest/batch", json=[{"payload": {"n": 0}}]))
            await until(store.entered)  # the one batch slot is busy writing
            second = await client.post("/ingest/batch", json=[{"payload": {"n": i}} for i in range(1, 50)])
            held = not store.gate.is_set()
            store.gate.set()
            return await first, second, held, (await client.get("/metrics")).text

    first, second, held, metrics = asyncio.run(scenario())
    assert held
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert second.json()["error"] == "overloaded" and "1 batches in flight" in second.json()["detail"]
    assert first.status_code == 202
    assert container.metadata_repo().count() == 1  # the shed batch wrote nothing
    assert _shed_metric(metrics) == 1


def test_the_bounds_are_settings_with_defaults():
    s = Settings.from_env({})
    assert (s.ingest_queue_max, s.batches_in_flight_max, s.ingest_in_flight_max, s.ingest_flushes) == (2000, 8, 75, 2)
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_INGEST_QUEUE_MAX": "5",
                                                   "WOTR_BATCHES_IN_FLIGHT_MAX": "3"}))
    assert container.group_commit().max_queued == 5 and container.batch_slots().limit == 3


def test_a_standing_queue_is_refused_a_slow_write_is_not(ingest, repo):
    """The bound in time, after CoDel: requests are refused once the oldest unanswered one
    has been older than max_wait for `standing` seconds running, not on one slow write;
    after a refusal, any sojourn above max_wait refuses at once for a second."""
    gated, shed = Gated(ingest.ingest_many), Shed()
    now = [0.0]

    async def scenario():
        commit = GroupCommit(gated, flushes=1, max_queued=1000, max_wait=0.05, standing=0.05, observer=shed,
                             clock=lambda: now[0])
        await commit.start()
        submit = lambda i: asyncio.create_task(commit.submit(IngestRequest(id=i, payload={})))  # noqa: E731
        first = submit("first")
        await until(gated.entered)  # the only flush slot is held: the first stays unanswered
        taken = [submit("w-0")]
        await asyncio.sleep(0)
        now[0] += 0.049
        assert not commit.overloaded  # within the bound
        now[0] += 0.002  # 51 ms: above the bound, but not for long yet (one slow write)
        assert not commit.overloaded
        taken.append(submit("w-1"))
        await asyncio.sleep(0)
        now[0] += 0.049  # above for 49 ms running
        assert not commit.overloaded
        now[0] += 0.002  # ... for 51 ms: a standing queue
        with pytest.raises(Overloaded) as refused:
            await commit.submit(IngestRequest(id="late", payload={}))
        gated.gate.set()
        answers = await asyncio.gather(first, *taken)
        assert not commit.overloaded  # nothing unanswered: taken again
        gated.gate.clear()
        calls = gated.calls
        second = submit("second")
        await until(lambda: gated.calls == calls + 1)
        now[0] += 0.06  # above the bound, not for 50 ms running, but 0.06 s after the refusal: strict
        strict = commit.overloaded
        gated.gate.set()
        await second
        now[0] += 1.0  # a second later the first rule applies again
        gated.gate.clear()
        third = submit("third")
        await until(lambda: gated.calls == calls + 2)
        now[0] += 0.06
        relaxed = commit.overloaded
        gated.gate.set()
        await third
        await commit.stop()
        return refused.value, answers, strict, relaxed

    refused, answers, strict, relaxed = asyncio.run(scenario())
    assert "wait longer than 50 ms" in str(refused) and refused.retry_after == 1.0
    assert all(isinstance(a, Receipt) for a in answers) and "late" not in repo.rows
    assert strict and not relaxed
    assert shed.events == 1


def test_an_admitted_request_is_not_refused_and_its_sojourn_counts_from_its_admission(ingest, repo):
    """A request the caller admitted already (the API's protocol, at its headers) is taken
    even while the policy sheds, and its wait counts from when it was admitted: one that
    waited for the event loop before reaching the queue makes the queue look as old as it is."""
    gated, shed = Gated(ingest.ingest_many), Shed()
    now = [10.0]

    async def scenario():
        commit = GroupCommit(gated, flushes=1, max_wait=0.05, standing=0.0, observer=shed, clock=lambda: now[0])
        await commit.start()
        first = asyncio.create_task(commit.submit(IngestRequest(id="first", payload={}), admitted_at=9.9))
        await until(gated.entered)
        behind = commit.overloaded  # admitted 100 ms ago: above the 50 ms bound already
        admitted = asyncio.create_task(commit.submit(IngestRequest(id="admitted", payload={}), admitted_at=10.0))
        with pytest.raises(Overloaded):
            await commit.submit(IngestRequest(id="new", payload={}))
        await asyncio.sleep(0)
        gated.gate.set()
        answers = await asyncio.gather(first, admitted)
        await commit.stop()
        return behind, answers

    behind, answers = asyncio.run(scenario())
    assert behind
    assert all(isinstance(a, Receipt) for a in answers)
    assert "admitted" in repo.rows and "new" not in repo.rows
    assert shed.events == 1


def test_while_behind_the_api_refuses_before_reading_the_body():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    gated = Gated(container.ingest_service().ingest_many)
    now = [0.0]
    container.group_commit.override(providers.Singleton(
        GroupCommit, gated, flushes=1, max_wait=0.05, standing=0.0, clock=lambda: now[0],
        observer=container.telemetry().ingest))

    async def scenario():
        async with serving(container.app()) as client:
            first = asyncio.create_task(client.post("/ingest", json={"payload": {"n": 0}}))
            await until(gated.entered)
            queued = asyncio.create_task(client.post("/ingest", json={"payload": {"n": 1}}))
            for _ in range(500):  # the second request reached the queue
                if container.group_commit().queued == 1:
                    break
                await asyncio.sleep(0.01)
            now[0] += 1.0  # the queued one has waited a second
            refused = await client.post("/ingest", content=b"never read", headers={"content-type": "text/plain"})
            gated.gate.set()
            return refused, await first, await queued

    refused, first, queued = asyncio.run(scenario())
    # A text/plain body would be 415 if it were read: the refusal came first.
    assert refused.status_code == 503 and refused.json()["error"] == "overloaded"
    assert refused.headers["retry-after"] == "1"
    assert first.status_code == 202 and queued.status_code == 202


def test_a_late_event_loop_sheds_too():
    """When the loop itself is behind (its lag beyond max_wait), requests are refused even
    though no event waits for a write."""
    commit = GroupCommit(lambda items: [], max_wait=0.05)

    async def scenario():
        await commit.start()
        on_time, late = commit.refuse_if_overloaded(late=0.01), commit.refuse_if_overloaded(late=0.2)
        await commit.stop()
        return on_time, late

    on_time, late = asyncio.run(scenario())
    assert on_time is None
    assert isinstance(late, Overloaded) and "the server is behind" in str(late)


def test_the_loop_lag_watch_sees_a_loop_late_at_every_turn_not_one_pause():
    from wotr_apps.api.edge import LoopLag

    async def scenario():
        lag = LoopLag(every=0.005, window=4)
        await lag.start()
        await asyncio.sleep(0.05)
        calm = lag.lag
        time.sleep(0.2)  # one pause: the timer fires late once
        await asyncio.sleep(0.03)
        after_one_pause = lag.lag
        worst = 0.0
        for _ in range(10):  # a loop busy at every turn: each timer fires ~80 ms late
            time.sleep(0.08)
            await asyncio.sleep(0.001)
            worst = max(worst, lag.lag)
        await lag.stop()
        return calm, after_one_pause, worst

    calm, after_one_pause, busy = asyncio.run(scenario())
    assert calm < 0.05 and after_one_pause < 0.05
    assert busy > 0.05


# -- refused at the connection ---------------------------------------------------------------


class Switched(GroupCommit):
    """The real group commit, told to shed by the test (the policy itself is tested above)."""

    shed_now = False
    shed_after_next = False  # admit the next request, then shed

    def shed_reason(self, late: float = 0.0) -> str | None:
        if self.shed_after_next:
            self.shed_after_next, self.shed_now = False, True
            return super().shed_reason(late)
        if self.shed_now:
            self._observer.shed(1)
            return "the writes are behind (test)"
        return super().shed_reason(late)


def read_answer(stream) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer from `stream` (a socket's buffered reader: answers may share a read)."""
    status = stream.readline()
    assert status, "connection closed before an answer"
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return int(status.split()[1]), headers, stream.read(int(headers.get("content-length", "0")))


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), len(body), b"".join(h + b"\r\n" for h in extra))) + body


def http_count(text: str, status: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_server_request_duration_seconds_count{")
               and f'http_response_status_code="{status}"' in line and 'POST /ingest"' in line)


@pytest.fixture
def switched():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    container.group_commit.override(providers.Singleton(
        Switched, container.ingest_service.provided.accept_many, observer=container.telemetry.provided.ingest))
    return container


def test_the_server_refuses_at_the_connection_and_keeps_it_alive(switched):
    """While shedding, `POST /ingest` is answered 503 by the server's protocol as its headers
    complete: the application never sees it (no HTTP metric of a 503), its body is skipped,
    nothing is written, and the next request on the same connection is served."""
    with uvicorn_serving(switched) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        answers = conn.makefile("rb")
        body = b'{"payload": {"n": 1}}'
        conn.sendall(post("/ingest", body))
        code, _, _ = read_answer(answers)
        assert code == 202
        switched.group_commit().shed_now = True
        conn.sendall(post("/ingest?x=1", b'{"payload": {"n": 2}}' + b" " * 5000) + post("/ingest", body))
        refusals = [read_answer(answers), read_answer(answers)]  # a refusal, then a pipelined one behind it
        switched.group_commit().shed_now = False
        conn.sendall(post("/ingest", b'{"payload": {"n": 3}}'))  # the same connection serves again
        after, _, _ = read_answer(answers)
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        _, _, metrics = read_answer(answers)
    for code, headers, answer in refusals:
        assert code == 503 and headers["retry-after"] == "1" and headers["content-type"] == "application/json"
        assert msgspec.json.decode(answer)["error"] == "overloaded"
    assert after == 202
    assert switched.metadata_repo().count() == 2  # n=1 and n=3: nothing of the refused ones
    text = metrics.decode()
    assert _shed_metric(text) == 2
    assert http_count(text, "503") == 0 and http_count(text, "202") == 2  # never reached the application


def test_a_request_the_server_admitted_is_served_even_if_shedding_began_since(switched):
    """The protocol admits a request as its headers complete; shedding that begins before
    the application runs it does not refuse it after all (the middleware does not ask
    again), so an admitted request is never read and then refused."""
    commit = switched.group_commit()
    with uvicorn_serving(switched) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        commit.shed_after_next = True
        conn.sendall(post("/ingest", b'{"payload": {"n": 1}}'))
        code, _, _ = read_answer(conn.makefile("rb"))
        assert commit.shed_now  # shedding began right after the admission
        commit.shed_now = False
    assert code == 202
    assert switched.metadata_repo().count() == 1


def test_a_refused_request_that_expects_100_continue_gets_its_answer_and_a_closed_connection(switched):
    switched_commit = switched.group_commit()
    with uvicorn_serving(switched) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        switched_commit.shed_now = True
        head = post("/ingest", b'{"payload": {}}', b"Expect: 100-continue").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        conn.sendall(head)  # the body is held back until "100 Continue", which never comes
        code, headers, _ = read_answer(conn.makefile("rb"))
        assert code == 503 and headers.get("connection") == "close"
        assert conn.recv(1024) == b""  # closed by the server
    assert switched.metadata_repo().count() == 0


# -- the bound on requests in flight ---------------------------------------------------------


def _gated_container(**env: str):
    """The memory profile with its one flush held at a gate (and no shedding by sojourn)."""
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory", **env}), with_workers=False)
    gated = Gated(container.ingest_service().ingest_many)
    container.group_commit.override(providers.Singleton(
        GroupCommit, gated, flushes=1, max_wait=60, observer=container.telemetry().ingest))
    return container, gated


def test_past_the_in_flight_bound_the_server_refuses_at_the_connection():
    """With WOTR_INGEST_IN_FLIGHT_MAX requests admitted and unanswered (one in a held flush,
    one waiting for it), the next is refused at its headers, nothing of it written; once
    they are answered they leave the count, and requests are served again."""
    container, gated = _gated_container(WOTR_INGEST_IN_FLIGHT_MAX="2")
    body = b'{"payload": {"n": 1}}'
    with uvicorn_serving(container) as port:
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            conns[0].sendall(post("/ingest", body))
            for _ in range(500):
                if gated.entered.is_set():
                    break
                time.sleep(0.01)
            conns[1].sendall(post("/ingest", b'{"payload": {"n": 2}}'))
            time.sleep(0.2)  # admitted, and waiting for the held flush
            conns[2].sendall(post("/ingest", b'{"payload": {"n": 3}}'))
            refused = read_answer(conns[2].makefile("rb"))
            held = not gated.gate.is_set()
            gated.gate.set()
            served = [read_answer(c.makefile("rb"))[0] for c in conns[:2]]
            again = []
            for conn in conns:  # the count went back down: one after the other, all served
                conn.sendall(post("/ingest", b'{"payload": {"again": true}}'))
                again.append(read_answer(conn.makefile("rb"))[0])
            conns[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            _, _, metrics = read_answer(conns[0].makefile("rb"))
        finally:
            for conn in conns:
                conn.close()
    code, headers, answer = refused
    assert held and code == 503 and headers["retry-after"] == "1"
    assert msgspec.json.decode(answer) == {"status_code": 503, "error": "overloaded",
                                           "detail": "api is unavailable: 2 requests are being served already"}
    assert served == [202, 202] and again == [202, 202, 202]
    assert container.metadata_repo().count() == 5  # n=1, n=2 and the three again: nothing of n=3
    assert _shed_metric(metrics.decode()) == 1


def test_past_the_in_flight_bound_the_middleware_refuses_too():
    """The same bound where no protocol of ours admits (the ASGI middleware alone), and a
    request that fails still leaves the count."""
    container, gated = _gated_container(WOTR_INGEST_IN_FLIGHT_MAX="1")

    async def scenario():
        async with serving(container.app()) as client:
            first = asyncio.create_task(client.post("/ingest", json={"payload": {"n": 0}}))
            await until(gated.entered)
            refused = await client.post("/ingest", json={"payload": {"n": 1}})
            gated.gate.set()
            answered = await first
            invalid = await client.post("/ingest", content=b"{not json", headers={"content-type": "application/json"})
            after = await client.post("/ingest", json={"payload": {"n": 2}})
            return refused, answered, invalid, after

    refused, answered, invalid, after = asyncio.run(scenario())
    assert refused.status_code == 503 and "1 requests are being served already" in refused.json()["detail"]
    assert answered.status_code == 202 and invalid.status_code == 400 and after.status_code == 202
    assert container.metadata_repo().count() == 2


def test_a_request_that_asks_for_an_upgrade_never_holds_an_in_flight_slot():
    """A `POST /ingest` asking to become a WebSocket leaves the HTTP protocol before the
    application sees it: were it admitted at its headers, its slot would never come back."""
    container, gated = _gated_container(WOTR_INGEST_IN_FLIGHT_MAX="1")
    gated.gate.set()
    upgrade = (b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    with uvicorn_serving(container) as port:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(post("/ingest", b"", *upgrade))
                assert conn.recv(1024)  # answered (refused as a WebSocket) whatever the answer
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(post("/ingest", b'{"payload": {"n": 1}}'))
            code, _, answer = read_answer(conn.makefile("rb"))
    assert code == 202, answer
