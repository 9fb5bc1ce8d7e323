"""Group commit: concurrent single-event requests share flushes; each gets its own answer."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from wotr_domain.services import GroupCommit
from wotr_domain.errors import InvalidId, Unavailable
from wotr_domain.models import EventStatus, IngestRequest


class Gated:
    """The real `ingest_many`, held at a gate so that requests pile up behind a flush."""

    def __init__(self, ingest) -> None:
        self.ingest = ingest
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, items):
        self.sizes.append(len(items))
        self.gate.wait(10)
        return self.ingest.ingest_many(items)


def run(coro):
    return asyncio.run(coro)


def test_requests_that_arrive_during_a_flush_go_out_together(ingest, store, repo):
    gated = Gated(ingest)

    async def scenario():
        commit = GroupCommit(gated, flushes=1, max_wait=10)  # grouping, not shedding, under test
        await commit.start()
        first = asyncio.create_task(commit.submit(IngestRequest(id="first", payload={})))
        await asyncio.sleep(0.05)  # the first flush is in progress, held at the gate
        rest = [asyncio.create_task(commit.submit(IngestRequest(id=f"r-{i}", payload={"i": i}))) for i in range(20)]
        await asyncio.sleep(0.05)
        gated.gate.set()
        receipts = await asyncio.gather(first, *rest)
        await commit.stop()
        return receipts

    receipts = run(scenario())
    assert gated.sizes == [1, 20]
    assert [r.id for r in receipts] == ["first"] + [f"r-{i}" for i in range(20)]
    assert all(r.status is EventStatus.PUBLISHED for r in receipts)
    # A client id's object carries a fresh attempt suffix: racing retries never share a key.
    assert re.fullmatch(r"raw/dt=[\d-]+/first\.[0-9a-f-]{36}\.json", receipts[0].object_key)
    assert receipts[0].line is None
    assert {r.object_key for r in receipts[1:]} == {receipts[1].object_key} and receipts[1].object_key.endswith(".ndjson")
    assert sorted(r.line for r in receipts[1:]) == list(range(20))
    assert len(list(store.list("raw/"))) == 2 and repo.count() == 21


def test_a_bad_request_in_a_group_fails_alone(ingest, repo):
    gated = Gated(ingest)
    gated.gate.set()

    async def scenario():
        commit = GroupCommit(gated, flushes=1)
        await commit.start()
        tasks = [asyncio.create_task(commit.submit(IngestRequest(id=i, payload={}))) for i in ("ok-1", "bad id", "ok-2")]
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await commit.stop()
        return answers

    ok1, bad, ok2 = run(scenario())
    assert isinstance(bad, InvalidId)
    assert (ok1.id, ok2.id) == ("ok-1", "ok-2")
    assert repo.count() == 2


def test_an_outage_fails_every_request_of_the_flush(ingest, repo):
    repo.outage = True

    async def scenario():
        commit = GroupCommit(ingest.ingest_many, flushes=2)
        await commit.start()
        answers = await asyncio.gather(*(commit.submit(IngestRequest(payload={"n": i})) for i in range(5)),
                                       return_exceptions=True)
        await commit.stop()
        return answers

    answers = run(scenario())
    assert all(isinstance(a, Unavailable) for a in answers)


def test_submitting_before_start_is_refused(ingest):
    with pytest.raises(Unavailable):
        run(GroupCommit(ingest.ingest_many).submit(IngestRequest(payload={})))


class GatedBus:
    """An event bus whose publish waits at a gate (or fails when told to)."""

    def __init__(self, bus) -> None:
        self.bus = bus
        self.gate = threading.Event()
        self.fail = False
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.bus, name)

    def publish(self, messages):
        self.calls.append(len(messages))
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail:
            raise Unavailable("kafka", "down (test)")
        self.bus.publish(messages)


def test_accept_many_answers_once_durable_and_publishes_after(store, repo, bus):
    """The group commit answers a flush as soon as its objects and rows are durable; the
    publish (and the mark) follow on threads of their own, so a bus that hangs holds up no
    other flush; a failed publish leaves the events `stored` for the outbox relay."""
    from wotr_domain.services import IngestService

    gated = GatedBus(bus)
    service = IngestService(store, repo, gated)

    async def scenario():
        commit = GroupCommit(service.accept_many, flushes=1, max_wait=10)
        await commit.start()
        receipt = await asyncio.wait_for(commit.submit(IngestRequest(id="a", payload={})), 5)  # the bus still waits
        # The only flush slot is free again while a's publish hangs: the next one is answered.
        next_one = await asyncio.wait_for(commit.submit(IngestRequest(id="a2", payload={})), 5)
        assert next_one.status is EventStatus.STORED
        stored_then = repo.get("a").status
        gated.gate.set()
        for _ in range(500):
            if repo.get("a").status is EventStatus.PUBLISHED:
                break
            await asyncio.sleep(0.01)
        gated.fail = True
        failed = await commit.submit(IngestRequest(id="b", payload={}))
        await commit.stop()  # waits for the step after the flush
        return receipt, stored_then, failed

    receipt, stored_then, failed = run(scenario())
    assert receipt.status is EventStatus.STORED and stored_then is EventStatus.STORED
    assert repo.get("a").status is EventStatus.PUBLISHED and sorted(m.key for m in bus.messages()) == ["a", "a2"]
    assert failed.status is EventStatus.STORED and repo.get("b").status is EventStatus.STORED


def test_publishes_that_wait_are_merged_into_one(store, repo, bus):
    """Flushes answered while the publishing thread is busy leave steps that are merged:
    one publish (and one mark) for all of them."""
    from wotr_domain.services import IngestService

    gated = GatedBus(bus)
    service = IngestService(store, repo, gated)

    async def scenario():
        commit = GroupCommit(service.accept_many, flushes=1, max_wait=10)
        await commit.start()
        await commit.submit(IngestRequest(id="a", payload={}))  # its publish holds the only publishing thread
        for _ in range(500):
            if gated.calls:
                break
            await asyncio.sleep(0.01)
        for i in ("b", "c", "d"):  # three flushes, one after the other
            await commit.submit(IngestRequest(id=i, payload={}))
        gated.gate.set()
        await commit.stop()

    run(scenario())
    assert gated.calls == [1, 3]
    assert all(repo.get(i).status is EventStatus.PUBLISHED for i in "abcd")
    assert sorted(m.key for m in bus.messages()) == ["a", "b", "c", "d"]
