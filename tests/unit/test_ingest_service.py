"""The ingest flow on in-memory adapters: store -> record -> publish -> mark, and its failures."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from wotr_domain.codec import decode_event, sha256_hex
from wotr_domain.errors import InvalidEvent, InvalidId, PayloadTooLarge, Unavailable
from wotr_domain.models import EventStatus, IngestRequest


def test_an_event_is_archived_recorded_and_published(ingest, store, repo, bus, clock):
    receipt = ingest.ingest(IngestRequest(payload={"example": "hello"}, source="web", type="click"))
    assert receipt.status is EventStatus.PUBLISHED and not receipt.duplicate
    assert receipt.object_key == f"raw/dt=2026-05-17/{receipt.id}.json"
    raw = store.get(receipt.object_key)
    event = decode_event(raw)
    assert (event.id, event.payload, event.source, event.type) == (receipt.id, {"example": "hello"}, "web", "click")
    assert event.received_at == clock.now
    row = repo.get(receipt.id)
    assert row.status is EventStatus.PUBLISHED
    assert row.checksum == sha256_hex(raw) and row.size == len(raw)
    (message,) = bus.messages()
    assert message.key == receipt.id and message.value == raw
    assert message.headers == {"object-key": receipt.object_key}  # the key is the id; the value JSON


def test_generated_ids_are_uuid7_and_sort_by_time(ingest, clock):
    import time
    import uuid

    first = ingest.ingest(IngestRequest(payload={}))
    time.sleep(0.002)
    second = ingest.ingest(IngestRequest(payload={}))
    assert uuid.UUID(first.id).version == 7
    assert first.id < second.id


def test_a_repeated_client_id_is_answered_with_the_first_receipt(ingest, store, repo, bus, clock):
    first = ingest.ingest(IngestRequest(id="order-42", payload={"n": 1}))
    clock.advance(86_400)  # a retry the next day must not create a second object
    again = ingest.ingest(IngestRequest(id="order-42", payload={"n": 1}))
    assert again.duplicate is True
    assert (again.id, again.object_key) == (first.id, first.object_key)
    assert list(store.list("raw/")) == [first.object_key]
    assert repo.count() == 1
    assert len(bus.messages()) == 1


def test_bad_client_ids_are_refused_before_any_write(ingest, store, repo, bus):
    for bad in ["", "../etc/passwd", "a b", "x" * 129, "-leading-dash"]:
        with pytest.raises(InvalidId):
            ingest.ingest(IngestRequest(id=bad, payload={}))
    assert list(store.list()) == [] and repo.count() == 0 and bus.messages() == []


def test_an_event_over_the_size_limit_is_refused_and_writes_nothing(ingest, store, repo):
    with pytest.raises(PayloadTooLarge):
        ingest.ingest(IngestRequest(payload={"blob": "x" * 5000}))
    assert list(store.list()) == [] and repo.count() == 0


def test_bus_down_still_accepts_and_leaves_the_event_for_the_relay(ingest, store, repo, bus):
    bus.outage = True
    receipt = ingest.ingest(IngestRequest(payload={"n": 1}))
    assert receipt.status is EventStatus.STORED
    assert store.exists(receipt.object_key)
    assert repo.get(receipt.id).status is EventStatus.STORED
    bus.outage = False
    assert bus.messages() == []


def test_metadata_down_refuses_and_removes_the_archived_object(ingest, store, repo, bus):
    repo.outage = True
    with pytest.raises(Unavailable):
        ingest.ingest(IngestRequest(payload={"n": 1}))
    repo.outage = False
    assert list(store.list()) == []
    assert repo.count() == 0 and bus.messages() == []


def test_store_down_refuses_and_writes_nothing(ingest, store, repo, bus):
    store.outage = True
    with pytest.raises(Unavailable):
        ingest.ingest(IngestRequest(payload={"n": 1}))
    store.outage = False
    assert list(store.list()) == [] and repo.count() == 0 and bus.messages() == []


def test_a_batch_accepts_the_valid_items_and_reports_each_invalid_one(ingest, store, repo, bus):
    items = [
        IngestRequest(payload={"n": 0}),
        InvalidEvent("Expected `object`, got `int` - at `$.payload`", field="payload"),
        IngestRequest(id="dup", payload={"n": 2}),
        IngestRequest(id="dup", payload={"n": 2}),
        IngestRequest(id="bad id", payload={}),
        IngestRequest(id="dup", payload={"n": 3}),
    ]
    results = ingest.ingest_batch(items)
    assert [r.index for r in results] == [0, 1, 2, 3, 4, 5]
    assert results[0].status == "published" and results[0].error is None
    assert results[1].error and results[1].field == "payload" and results[1].code == "invalid_event"
    assert results[2].id == "dup" and not results[2].duplicate
    assert results[3].id == "dup" and results[3].duplicate
    assert results[4].field == "id" and results[4].code == "invalid_id"
    assert results[5].code == "conflict" and "'dup'" in results[5].error
    assert repo.count() == 2
    (key,) = store.list("raw/")  # one NDJSON object for the batch
    assert key.startswith("raw/dt=2026-05-17/batch-") and key.endswith(".ndjson")
    assert (results[0].object_key, results[0].line, results[2].object_key, results[2].line) == (key, 0, key, 1)
    assert len(bus.messages()) == 2


def test_a_batch_object_holds_each_event_on_its_line_with_its_own_checksum(ingest, store, repo, bus):
    results = ingest.ingest_batch([IngestRequest(id=f"n-{i}", payload={"n": i}) for i in range(3)])
    key = results[0].object_key
    lines = store.get(key).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    for i, line in enumerate(lines[:3]):
        event = decode_event(line)
        assert (event.id, event.payload) == (f"n-{i}", {"n": i})
        row = repo.get(f"n-{i}")
        assert (row.object_key, row.line, row.size, row.checksum) == (key, i, len(line), sha256_hex(line))
    assert [m.value for m in bus.messages()] == lines[:3]
    assert [m.headers["object-line"] for m in bus.messages()] == ["0", "1", "2"]


def test_a_batch_is_published_in_one_call(ingest, bus):
    calls = []
    original = bus.publish
    bus.publish = lambda messages: (calls.append(len(messages)), original(messages))[1]
    ingest.ingest_batch([IngestRequest(payload={"n": i}) for i in range(50)])
    assert calls == [50]


def test_a_batch_refused_by_metadata_leaves_no_object(ingest, store, repo):
    repo.outage = True
    with pytest.raises(Unavailable):
        ingest.ingest_batch([IngestRequest(payload={"n": i}) for i in range(5)])
    repo.outage = False
    assert list(store.list()) == []


def test_event_time_from_the_client_is_kept(ingest, store):
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    receipt = ingest.ingest(IngestRequest(payload={}, timestamp=ts))
    assert decode_event(store.get(receipt.object_key)).timestamp == ts


def test_raw_objects_are_compact_json(ingest, store):
    receipt = ingest.ingest(IngestRequest(payload={"a": [1, 2]}))
    raw = store.get(receipt.object_key)
    assert msgspec.json.decode(raw)["payload"] == {"a": [1, 2]}
    assert b"\n" not in raw


def test_after_a_failed_publish_the_bus_is_skipped_for_a_while(ingest, bus, repo, clock):
    bus.outage = True
    ingest.ingest(IngestRequest(payload={"n": 1}))
    bus.outage = False
    paused = ingest.ingest(IngestRequest(payload={"n": 2}))
    assert paused.status is EventStatus.STORED and bus.messages() == []
    clock.advance(6)
    resumed = ingest.ingest(IngestRequest(payload={"n": 3}))
    assert resumed.status is EventStatus.PUBLISHED
    assert [m.key for m in bus.messages()] == [resumed.id]
    assert repo.count(EventStatus.STORED) == 2
