"""Analytics loading and the outbox relay on in-memory adapters."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from wotr_adapters.memory import InMemoryAnalyticsSink
from wotr_apps.workers import WorkerThread, run_relay
from wotr_domain.codec import decode_event_fields
from wotr_domain.errors import Unavailable
from wotr_domain.models import AnalyticsRow, BusMessage, Delivery, EventStatus, IngestRequest
from wotr_domain.services import AnalyticsLoader, OutboxRelay, decode_batch
from wotr_domain.services.loader import AnalyticsColumns, DeliveryColumns, row_for


def test_loader_writes_rows_and_commits(ingest, loader, sink, bus):
    receipts = [ingest.ingest(IngestRequest(payload={"n": i}, source="s", type="t")) for i in range(3)]
    outcome = loader.run_once(timeout=0)
    assert (outcome.received, outcome.loaded, outcome.dead_lettered) == (3, 3, 0)
    assert {r.id for r in sink.latest(10)} == {r.id for r in receipts}
    row = sink.rows[receipts[0].id]
    assert (row.payload, row.source, row.type, row.object_key) == ('{"n":0}', "s", "t", receipts[0].object_key)
    assert bus.committed["analytics"] == 3


def test_a_sink_outage_leaves_the_batch_uncommitted_and_it_is_loaded_later(ingest, bus, sink):
    ingest.ingest(IngestRequest(payload={"n": 1}))
    loader = AnalyticsLoader(bus.subscribe("g"), sink)
    batch = loader.poll(100, 0)
    sink.outage = True
    with pytest.raises(Unavailable):
        loader.handle(batch)
    assert bus.committed.get("g", 0) == 0
    sink.outage = False
    # a restarted consumer gets the same message again
    again = AnalyticsLoader(bus.subscribe("g"), sink).run_once(timeout=0)
    assert again.loaded == 1 and sink.count() == 1


def test_poison_messages_go_to_the_dead_letter_topic_and_do_not_block(ingest, bus, sink, loader):
    bus.publish([BusMessage(key="p1", value=b"{not json", headers={})])
    good = ingest.ingest(IngestRequest(payload={"ok": True}))
    outcome = loader.run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (1, 1)
    assert sink.count() == 1 and good.id in sink.rows
    (letter,) = bus.dead_letters()
    assert letter.value == b"{not json"
    assert letter.headers["dlq-reason"].startswith("undecodable event")
    assert bus.committed["analytics"] == 2


def test_a_key_that_does_not_match_the_event_id_is_dead_lettered(ingest, store, bus, loader, sink):
    receipt = ingest.ingest(IngestRequest(payload={}))
    bus.publish([BusMessage(key="someone-else", value=store.get(receipt.object_key), headers={})])
    outcome = loader.run_once(timeout=0)
    assert outcome.dead_lettered == 1
    assert "does not match" in bus.dead_letters()[0].headers["dlq-reason"]


def test_loading_the_same_events_twice_leaves_one_row_each(ingest, bus, sink):
    for i in range(4):
        ingest.ingest(IngestRequest(payload={"n": i}))
    AnalyticsLoader(bus.subscribe("a"), sink).run_once(timeout=0)
    AnalyticsLoader(bus.subscribe("b"), sink).run_once(timeout=0)
    assert sink.count() == 4


def test_relay_publishes_events_left_stored_after_the_grace_period(ingest, relay, bus, repo, clock, store):
    bus.outage = True
    receipt = ingest.ingest(IngestRequest(payload={"n": 1}))
    bus.outage = False
    assert relay.run_once() == 0  # still inside the grace period
    clock.advance(11)
    assert relay.run_once() == 1
    (message,) = bus.messages()
    assert message.key == receipt.id and message.value == store.get(receipt.object_key)
    assert repo.get(receipt.id).status is EventStatus.PUBLISHED
    assert relay.run_once() == 0


def test_relay_with_the_bus_down_keeps_rows_stored(ingest, relay, bus, repo, clock):
    bus.outage = True
    receipt = ingest.ingest(IngestRequest(payload={"n": 1}))
    clock.advance(11)
    with pytest.raises(Unavailable):
        relay.run_once()
    assert repo.get(receipt.id).status is EventStatus.STORED


def test_accepted_events_reach_the_sink_across_a_bus_outage(ingest, relay, loader, bus, sink, clock):
    bus.outage = True
    ids = {ingest.ingest(IngestRequest(payload={"n": i})).id for i in range(5)}
    bus.outage = False
    ids |= {ingest.ingest(IngestRequest(payload={"n": i})).id for i in range(5, 8)}
    clock.advance(30)
    relay.run_once()
    loader.run_once(timeout=0)
    assert set(sink.rows) == ids


def test_relay_republishes_the_right_line_of_a_batch_object(ingest, relay, bus, repo, clock, store):
    bus.outage = True
    results = ingest.ingest_batch([IngestRequest(payload={"n": i}) for i in range(4)])
    bus.outage = False
    clock.advance(11)
    assert relay.run_once() == 4
    lines = store.get(results[0].object_key).split(b"\n")
    assert sorted((m.key, m.value) for m in bus.messages()) == sorted((r.id, lines[r.line]) for r in results)
    assert repo.count(EventStatus.PUBLISHED) == 4


# -- the relay gives its lease back ----------------------------------------------------


def _backlog(ingest, bus, clock, n: int = 3) -> set[str]:
    """`n` events left `stored` by a bus outage, past the relay's grace period."""
    bus.outage = True
    ids = {ingest.ingest(IngestRequest(payload={"n": i})).id for i in range(n)}
    bus.outage = False
    clock.advance(11)
    return ids


def _another_relay(repo, store, bus, clock) -> OutboxRelay:
    return OutboxRelay(repo, store, bus, grace=timedelta(seconds=10), clock=clock)


def test_a_failed_publish_leaves_the_rows_claimable_at_once_by_another_relay(ingest, relay, bus, repo, clock, store):
    ids = _backlog(ingest, bus, clock)
    bus.outage = True
    with pytest.raises(Unavailable):
        relay.run_once()
    bus.outage = False
    assert {r.id for r in repo.rows.values() if r.status is EventStatus.STORED} == ids
    # no wait for the 60 s lease: the clock has not moved
    assert _another_relay(repo, store, bus, clock).run_once() == 3
    assert {m.key for m in bus.messages()} == ids
    assert repo.count(EventStatus.PUBLISHED) == 3


def test_a_failed_mark_releases_the_claim_too(ingest, relay, bus, repo, clock, store, monkeypatch):
    ids = _backlog(ingest, bus, clock)

    def mark_fails(event_ids, at):
        raise Unavailable("metadata repo", "simulated: the mark failed")

    monkeypatch.setattr(repo, "mark_published", mark_fails)
    with pytest.raises(Unavailable, match="the mark failed"):
        relay.run_once()
    monkeypatch.undo()
    assert {r.id for r in repo.claim_pending(10, clock.now, lease_seconds=60)} == ids


def test_a_release_that_fails_is_logged_and_the_lease_expires_as_before(ingest, relay, bus, repo, clock, store,
                                                                         monkeypatch, caplog):
    """PostgreSQL goes down between the publish and the mark: neither the mark nor the
    release reaches it; the relay raises the mark's error and the rows wait for their lease."""
    _backlog(ingest, bus, clock)
    publish = bus.publish

    def publish_then_the_repo_goes_down(messages):
        publish(messages)
        repo.outage = True

    monkeypatch.setattr(bus, "publish", publish_then_the_repo_goes_down)
    with caplog.at_level("WARNING"), pytest.raises(Unavailable, match="simulated outage"):
        relay.run_once()
    assert "the lease of 3 claimed rows was not released" in caplog.text
    repo.outage = False
    monkeypatch.undo()
    assert repo.count(EventStatus.STORED) == 3
    other = _another_relay(repo, store, bus, clock)
    assert other.run_once() == 0  # still leased
    clock.advance(61)
    assert other.run_once() == 3  # published again once the lease expired


def test_nothing_is_released_once_the_lease_has_expired(ingest, relay, bus, repo, clock, monkeypatch):
    """After its lease expired another relay may hold the rows: releasing would clear its claim."""
    _backlog(ingest, bus, clock)
    released = []
    monkeypatch.setattr(repo, "release", lambda ids: released.append(ids) or len(ids))

    def slow_failing_publish(messages):
        clock.advance(61)
        raise Unavailable("event bus", "simulated: no delivery report")

    monkeypatch.setattr(bus, "publish", slow_failing_publish)
    with pytest.raises(Unavailable):
        relay.run_once()
    assert released == []


def test_a_faulty_event_keeps_its_lease_when_the_batch_is_released(ingest, relay, bus, repo, clock, store):
    """An event whose bytes are missing is reported once per lease, not at every turn."""
    ids = _backlog(ingest, bus, clock)
    missing = sorted(ids)[0]
    del store.objects[repo.get(missing).object_key]
    bus.outage = True
    with pytest.raises(Unavailable):
        relay.run_once()
    bus.outage = False
    assert {r.id for r in repo.claim_pending(10, clock.now, lease_seconds=60)} == ids - {missing}


def _blocking_publish(bus, release: threading.Event, *, fail: bool):
    """A publish that waits for `release`, then fails (`fail`) or publishes."""
    publish = bus.publish
    started = threading.Event()

    def blocked(messages):
        started.set()
        release.wait(10)
        if fail:
            raise Unavailable("event bus", "simulated: no delivery report")
        publish(messages)

    bus.publish = blocked
    return started


def test_stopping_the_relay_while_its_publish_fails_releases_the_batch(ingest, relay, bus, repo, clock, store):
    """SIGTERM while Kafka is down: the stop waits for the batch in hand, whose publish
    fails; its rows are claimable at once when the worker has stopped."""
    ids = _backlog(ingest, bus, clock)
    worker = WorkerThread("wotr-relay", lambda s: run_relay(relay, s, interval=0.01), on_abandon=relay.release_claim)
    started = _blocking_publish(bus, worker.stop_event, fail=True)  # fails once the stop is asked for
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=5)
    assert not worker.is_alive() and worker.error is None
    assert {r.id for r in repo.claim_pending(10, clock.now, lease_seconds=60)} == ids


def test_a_stop_that_cannot_wait_for_the_batch_releases_its_claim(ingest, relay, bus, repo, clock, store):
    """The batch outlasts the stop's wait (its publish hangs): the claim is released
    anyway, so another relay publishes the rows at once."""
    ids = _backlog(ingest, bus, clock)
    hang = threading.Event()
    started = _blocking_publish(bus, hang, fail=False)
    worker = WorkerThread("wotr-relay", lambda s: run_relay(relay, s, interval=0.01), on_abandon=relay.release_claim)
    worker.start()
    try:
        assert started.wait(5)
        began = time.monotonic()
        worker.stop(timeout=0.2)
        assert worker.is_alive() and time.monotonic() - began < 5
        assert {r.id for r in repo.claim_pending(10, clock.now, lease_seconds=60)} == ids
    finally:
        hang.set()
        worker.stop(timeout=5)
    assert not worker.is_alive()


def test_a_relay_loop_that_crashes_releases_its_claim(ingest, relay, bus, repo, clock):
    ids = _backlog(ingest, bus, clock)

    def broken_publish(messages):
        raise RuntimeError("a bug, not an outage")

    bus.publish = broken_publish
    worker = WorkerThread("wotr-relay", lambda s: run_relay(relay, s, interval=0.01))
    worker.start()
    deadline = time.monotonic() + 5
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(worker.error, RuntimeError)
    assert {r.id for r in repo.claim_pending(10, clock.now, lease_seconds=60)} == ids


# -- batches as columns (what the Kafka subscription hands over) ------------------------


class _Columns(DeliveryColumns):
    """A polled batch as columns over a list of deliveries; notes which ones were asked for."""

    __slots__ = ("_deliveries", "asked", "keys", "object_keys", "values")

    def __init__(self, deliveries: list[Delivery]) -> None:
        self._deliveries = deliveries
        self.keys = [d.key for d in deliveries]
        self.values = [d.value for d in deliveries]
        self.object_keys = [d.headers.get("object-key", "") for d in deliveries]
        self.asked: list[int] = []

    def __getitem__(self, index):  # type: ignore[override]
        self.asked.append(index)
        return self._deliveries[index]


class _ColumnsSubscription:
    """The in-memory subscription, its batches handed over as `_Columns`."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.batches: list[_Columns] = []

    def poll(self, max_messages: int, timeout: float):
        batch = _Columns(self._inner.poll(max_messages, timeout))
        self.batches.append(batch)
        return batch

    def commit(self, deliveries) -> None:
        self._inner.commit(list(deliveries._deliveries))

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def test_a_batch_as_columns_loads_exactly_as_the_same_deliveries_in_a_list(ingest, store, bus):
    good = [ingest.ingest(IngestRequest(payload={"n": i}, source="s", type="t")) for i in range(4)]
    ingest.ingest_batch([IngestRequest(payload={"line": i}) for i in range(3)])  # object-key and object-line headers
    bus.publish([
        BusMessage(key="p1", value=b"{not json", headers={}),
        BusMessage(key="someone-else", value=store.get(good[0].object_key), headers={"object-key": "k"}),
        BusMessage(key=None, value=b'{"id":"x","received_at":"2026-05-17T23:59:59Z","payload":{"a":"\xff"}}',
                   headers={"object-key": "raw/x.json"}),
    ])
    refused = good[2].id
    outcomes, sinks, letters = [], [], []
    for group, columns in (("as-list", False), ("as-columns", True)):
        sink = InMemoryAnalyticsSink()
        sink.refuse = lambda row: row.id == refused
        subscription = bus.subscribe(group)
        loader = AnalyticsLoader(_ColumnsSubscription(subscription) if columns else subscription, sink, retry_delay=0)
        before = len(bus.dead_letters())
        outcomes.append(loader.run_once(timeout=0))
        sinks.append(sink.rows)
        letters.append([(d.key, d.value, d.headers) for d in bus.dead_letters()[before:]])
        assert bus.committed[group] == 10
    assert outcomes[0] == outcomes[1]
    assert (outcomes[1].received, outcomes[1].loaded, outcomes[1].dead_lettered, outcomes[1].refused) == (10, 6, 4, 1)
    assert sinks[0] == sinks[1] and len(sinks[1]) == 6
    assert letters[0] == letters[1]
    reasons = [headers["dlq-reason"] for _, _, headers in letters[1]]
    assert reasons[0].startswith("undecodable event") and "does not match" in reasons[1]
    assert "UnicodeDecodeError" in reasons[2] and reasons[3].startswith("refused by the analytics sink")


def test_the_loader_asks_a_batch_of_columns_only_for_the_deliveries_it_dead_letters(ingest, bus):
    for i in range(5):
        ingest.ingest(IngestRequest(payload={"n": i}))
    bus.publish([BusMessage(key="p1", value=b"{not json", headers={})])
    subscription = _ColumnsSubscription(bus.subscribe("g"))
    outcome = AnalyticsLoader(subscription, InMemoryAnalyticsSink()).run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (5, 1)
    assert subscription.batches[0].asked == [5]


def test_analytics_columns_are_a_sequence_of_the_rows_decode_batch_makes(ingest, bus):
    for i in range(3):
        ingest.ingest(IngestRequest(payload={"n": i}, source="s"))
    deliveries = bus.subscribe("g").poll(10, 0)
    rows, rejects = decode_batch(deliveries)
    assert rejects == [] and len(rows) == 3
    columns = AnalyticsColumns(tuple([getattr(r, f) for r in rows] for f in AnalyticsRow.__struct_fields__))
    assert len(columns) == 3 and list(columns) == rows
    assert columns[1] == rows[1] and columns[-1] == rows[-1]
    assert isinstance(columns[1:], AnalyticsColumns) and list(columns[1:]) == rows[1:]
    assert rows[0] == row_for(decode_event_fields(deliveries[0].value), deliveries[0].headers["object-key"])
    with pytest.raises(IndexError):
        columns[3]
