"""Analytics loading and the outbox relay on in-memory adapters."""

from __future__ import annotations

import pytest

from wotr_domain.errors import Unavailable
from wotr_domain.models import BusMessage, EventStatus, IngestRequest
from wotr_domain.services import AnalyticsLoader


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
