"""Integrity rules at the service and the HTTP edge, on the memory profile.

Same id and content: the first receipt (200). Same id, other content: 409 naming the id,
single and batch alike. Values no store can hold: 422 at the edge, nothing written. A
store's permanent refusal fails only the offending item of a batch or a flush. The relay
verifies checksums and reports faults. The group commit answers every request at stop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from litestar.testing import TestClient

from wotr_domain.services import GroupCommit
from wotr_apps.container import build_container
from wotr_apps.settings import Settings
from wotr_domain.archive import ChecksumMismatch, event_bytes, fingerprint
from wotr_domain.errors import Conflict, InvalidEvent, Refused, Unavailable
from wotr_domain.models import EventStatus, IngestRequest, Receipt
from wotr_domain.services import OutboxRelay


@pytest.fixture
def container():
    return build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)


@pytest.fixture
def client(container):
    with TestClient(container.app()) as c:
        yield c


# -- same id, same or other content ------------------------------------------------------


def test_an_identical_retry_is_200_with_the_first_receipt_and_other_content_is_409(client, container):
    first = client.post("/ingest", json={"id": "order-7", "payload": {"a": 1, "b": 2}, "type": "t"})
    assert first.status_code == 202
    # key order inside the payload is not content
    again = client.post("/ingest", json={"id": "order-7", "type": "t", "payload": {"b": 2, "a": 1}})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["object_key"] == first.json()["object_key"]
    for changed in ({"payload": {"a": 1, "b": 3}, "type": "t"}, {"payload": {"a": 1, "b": 2}, "type": "u"},
                    {"payload": {"a": 1, "b": 2}, "type": "t", "source": "web"},
                    {"payload": {"a": 1, "b": 2}, "type": "t", "timestamp": "2026-01-01T00:00:00Z"}):
        r = client.post("/ingest", json={"id": "order-7", **changed})
        assert r.status_code == 409, changed
        assert r.json()["error"] == "conflict" and "order-7" in r.json()["detail"]
    assert container.metadata_repo().count() == 1
    assert len(list(container.object_store().list("raw/"))) == 1


def test_a_batch_answers_a_conflicting_item_409_style_and_accepts_the_rest(client, container):
    client.post("/ingest", json={"id": "known", "payload": {"v": 1}})
    r = client.post("/ingest/batch", json=[
        {"id": "known", "payload": {"v": 1}},
        {"id": "known", "payload": {"v": 2}},
        {"id": "fresh", "payload": {"v": 1}},
        {"id": "fresh", "payload": {"v": 9}},
    ])
    assert r.status_code == 207
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    known, conflict, fresh, conflict_in_batch = body["results"]
    assert known["duplicate"] is True and "error" not in known
    assert conflict["code"] == "conflict" and "known" in conflict["error"]
    assert fresh["id"] == "fresh" and not fresh.get("duplicate")
    assert conflict_in_batch["code"] == "conflict" and "fresh" in conflict_in_batch["error"]
    assert container.metadata_repo().count() == 2


def test_the_fingerprint_ignores_key_order_and_sees_every_client_field():
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    base = fingerprint("x", {"a": 1, "b": {"c": 1, "d": 2}}, "s", "t", ts)
    assert base == fingerprint("x", {"b": {"d": 2, "c": 1}, "a": 1}, "s", "t", ts)
    assert len({base, fingerprint("y", {"a": 1, "b": {"c": 1, "d": 2}}, "s", "t", ts),
                fingerprint("x", {"a": 1, "b": {"c": 1, "d": 3}}, "s", "t", ts),
                fingerprint("x", {"a": 1, "b": {"c": 1, "d": 2}}, None, "t", ts),
                fingerprint("x", {"a": 1, "b": {"c": 1, "d": 2}}, "s", None, ts),
                fingerprint("x", {"a": 1, "b": {"c": 1, "d": 2}}, "s", "t", None)}) == 6


# -- values no store can hold ----------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("source", "we\u0000b"), ("type", "a\nb"), ("source", "x" * 257), ("type", "\u007f"),
    ("timestamp", "0001-01-01T00:00:00Z"), ("timestamp", "9999-12-31T23:59:59Z"),
])
def test_values_a_store_cannot_hold_are_422_at_the_edge_and_write_nothing(client, container, field, value):
    r = client.post("/ingest", json={"payload": {"n": 1}, field: value})
    assert r.status_code == 422 and r.json()["field"] == field
    batch = client.post("/ingest/batch", json=[{"payload": {"n": 1}, field: value}, {"payload": {"n": 2}}])
    assert batch.status_code == 207
    assert batch.json()["results"][0]["field"] == field and batch.json()["results"][1]["status"] == "published"
    assert container.metadata_repo().count() == 1  # only the good batch item


def test_control_characters_inside_the_payload_are_data_not_an_error(client):
    r = client.post("/ingest", json={"payload": {"text": "a\u0000b\nc"}, "source": "web-1", "type": "页面"})
    assert r.status_code == 202


# -- permanent refusals fail only the offending item ---------------------------------------------


def test_a_refused_item_fails_alone_in_a_batch(ingest, store, repo):
    repo.refuse = lambda row: row.id == "poison"
    results = ingest.ingest_batch([IngestRequest(id=i, payload={"i": i}) for i in ("a", "poison", "b")])
    assert [r.error is None for r in results] == [True, False, True]
    assert results[1].code == "refused"
    assert sorted(repo.rows) == ["a", "b"]
    for row in repo.rows.values():  # each good event's bytes are intact where its row says
        event_bytes(row, store.get(row.object_key))


def test_a_refused_request_fails_alone_in_a_group_commit_flush(client, container):
    container.metadata_repo().refuse = lambda row: row.id == "poison"
    commit = GroupCommit(container.ingest_service().ingest_many, flushes=1)

    async def scenario():
        await commit.start()
        tasks = [asyncio.create_task(commit.submit(IngestRequest(id=i, payload={}))) for i in ("a", "poison", "b")]
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await commit.stop()
        return answers

    a, poison, b = asyncio.run(scenario())
    assert isinstance(a, Receipt) and isinstance(b, Receipt)
    assert isinstance(poison, Refused)
    r = client.post("/ingest", json={"id": "poison", "payload": {}})
    assert r.status_code == 422 and r.json()["error"] == "refused"


def test_an_outage_is_still_an_outage(ingest, repo, store):
    repo.outage = True
    with pytest.raises(Unavailable):
        ingest.ingest_batch([IngestRequest(payload={"i": i}) for i in range(3)])
    repo.outage = False
    assert list(store.list()) == []


# -- readers verify checksums --------------------------------------------------------------------


def test_the_relay_publishes_verified_bytes_and_reports_missing_and_mismatching_ones(ingest, store, repo, bus, clock):
    faults: list[str] = []

    class Faults:
        def relayed(self, events: int) -> None: ...
        def fault(self, kind: str) -> None: faults.append(kind)

    bus.outage = True
    good, gone, bent = (ingest.ingest(IngestRequest(id=i, payload={"i": i})) for i in ("good", "gone", "bent"))
    bus.outage = False
    store.delete(gone.object_key)
    store.put(bent.object_key, store.get(bent.object_key).replace(b'"bent"}', b'"BENT"}'))
    clock.advance(60)
    relay = OutboxRelay(repo, store, bus, clock=clock, observer=Faults())
    assert relay.run_once() == 1
    assert [m.key for m in bus.messages()] == ["good"]
    assert sorted(faults) == ["checksum", "missing"]
    assert repo.get("gone").status is EventStatus.STORED and repo.get("bent").status is EventStatus.STORED


def test_event_bytes_verifies_a_line_of_a_batch_object(ingest, store, repo):
    results = ingest.ingest_batch([IngestRequest(payload={"i": i}) for i in range(3)])
    row = repo.get(results[1].id)
    obj = store.get(row.object_key)
    assert event_bytes(row, obj) == obj.split(b"\n")[1]
    with pytest.raises(ChecksumMismatch):
        event_bytes(row, obj.replace(b'"i":1', b'"i":7'))


# -- the group commit answers every request when it stops ----------------------------------------


def test_stopping_the_group_commit_answers_every_waiting_request(ingest):
    """Requests taken by the collector but not yet flushed get 503, never silence."""
    import threading

    gate = threading.Event()

    def slow(items):
        gate.wait(5)
        return ingest.ingest_many(items)

    async def scenario():
        commit = GroupCommit(slow, flushes=1, max_wait=10)  # stopping, not shedding, under test
        await commit.start()
        first = asyncio.create_task(commit.submit(IngestRequest(payload={"n": 0})))
        await asyncio.sleep(0.05)  # the only slot is busy: the next ones wait in the collector
        waiting = [asyncio.create_task(commit.submit(IngestRequest(payload={"n": i}))) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(commit.stop())
        await asyncio.sleep(0.05)
        gate.set()  # the flush in progress finishes and is answered
        await asyncio.wait_for(stopping, 5)
        return await asyncio.wait_for(asyncio.gather(first, *waiting, return_exceptions=True), 5)

    first, *waiting = asyncio.run(scenario())
    assert isinstance(first, Receipt)
    assert all(isinstance(w, Unavailable) and "shutting down" in str(w) for w in waiting)


def test_invalid_event_is_still_raised_for_bad_input(ingest):
    with pytest.raises(InvalidEvent):
        ingest.ingest(IngestRequest(payload={}, source="\x00"))


# -- durability of the embedded archive ----------------------------------------------------------


def test_the_filesystem_store_makes_new_directories_and_renames_durable(tmp_path, monkeypatch):
    """After a power loss a recorded row must not point at a vanished object: the file,
    the rename into its directory and every directory created on the way are fsynced."""
    import os
    import stat

    from wotr_adapters import filesystem
    from wotr_adapters.filesystem import FilesystemObjectStore

    synced: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(filesystem.os, "fsync", recording_fsync)
    store = FilesystemObjectStore(tmp_path / "objects")
    store.start()
    store.put("raw/dt=2026-01-01/a.json", b"{}")
    root = str(tmp_path / "objects")
    dirs = [p for kind, p in synced if kind == "dir"]
    assert [k for k, _ in synced].count("file") == 1
    # each new directory is synced in its parent, and the final directory after the rename
    assert dirs == [root, f"{root}/raw", f"{root}/raw/dt=2026-01-01"]
    synced.clear()
    store.put("raw/dt=2026-01-01/b.json", b"{}")  # existing directory: only the rename's
    assert [p for kind, p in synced if kind == "dir"] == [f"{root}/raw/dt=2026-01-01"]

