"""Backpressure: past the bound on waiting or in-flight work, ingest is refused at once
(`Overloaded`; the API: 503 + Retry-After) and counted as shed, never queued.

"At once" is checked without a clock: the refusals arrive while the flush in progress is
still held at its gate, so nothing was waited for.
"""

from __future__ import annotations

import asyncio
import time
import threading
from contextlib import asynccontextmanager

import httpx

import pytest
from dependency_injector import providers

from wotr_adapters.memory import InMemoryObjectStore
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

    def __call__(self, items):
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


async def until(event: threading.Event) -> None:
    for _ in range(500):
        if event.is_set():
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
    assert (s.ingest_queue_max, s.batches_in_flight_max) == (2000, 8)
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_INGEST_QUEUE_MAX": "5",
                                                   "WOTR_BATCHES_IN_FLIGHT_MAX": "3"}))
    assert container.group_commit().max_queued == 5 and container.batch_slots().limit == 3


def test_once_the_oldest_waits_longer_than_max_wait_new_requests_are_refused_at_once(ingest, repo):
    """The bound in time: how long the queue makes a request wait, not how many wait."""
    gated, shed = Gated(ingest.ingest_many), Shed()
    now = [0.0]

    async def scenario():
        commit = GroupCommit(gated, flushes=1, max_queued=1000, max_wait=0.05, observer=shed, clock=lambda: now[0])
        await commit.start()
        first = asyncio.create_task(commit.submit(IngestRequest(id="first", payload={})))
        await until(gated.entered)  # the only flush slot is held: what comes now waits
        waiting = [asyncio.create_task(commit.submit(IngestRequest(id=f"w-{i}", payload={}))) for i in range(3)]
        await asyncio.sleep(0)
        assert not commit.overloaded
        now[0] += 0.049  # within the bound: still taken
        waiting.append(asyncio.create_task(commit.submit(IngestRequest(id="w-3", payload={}))))
        await asyncio.sleep(0)
        now[0] += 0.002  # the oldest has now waited 51 ms
        assert commit.overloaded
        with pytest.raises(Overloaded) as refused:
            await commit.submit(IngestRequest(id="late", payload={}))
        gated.gate.set()
        answers = await asyncio.gather(first, *waiting)
        await asyncio.sleep(0.05)
        assert not commit.overloaded  # the queue drained: taken again
        again = await commit.submit(IngestRequest(id="after", payload={}))
        await commit.stop()
        return refused.value, answers, again

    refused, answers, again = asyncio.run(scenario())
    assert "wait longer than 50 ms" in str(refused) and refused.retry_after == 1.0
    assert all(isinstance(a, Receipt) for a in answers) and isinstance(again, Receipt)
    assert shed.events == 1 and "late" not in repo.rows


def test_while_behind_the_api_refuses_before_reading_the_body():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    gated = Gated(container.ingest_service().ingest_many)
    now = [0.0]
    container.group_commit.override(providers.Singleton(
        GroupCommit, gated, flushes=1, max_wait=0.05, clock=lambda: now[0], observer=container.telemetry().ingest))

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
