"""Concurrent attempts with one client id never corrupt the archive.

Many ids, many racing attempts each (the SDK that retries on a timeout while its first
attempt is still in flight), single requests and grouped flushes mixed, on the embedded
stores (files, SQLite) and on the real servers (S3 server, PostgreSQL). Afterwards every
metadata row is checked byte for byte against its archived object, every attempt's
answer against the row, and every archived object must be some event's.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryEventBus
from wotr_adapters.minio import MinioObjectStore, minio_client
from wotr_adapters.postgres import PostgresMetadataRepo, postgres_pool
from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
from wotr_domain.archive import event_bytes
from wotr_domain.codec import decode_event, sha256_hex
from wotr_domain.errors import Conflict
from wotr_domain.models import IngestRequest, Receipt
from wotr_domain.services import IngestService

IDS = 40
ATTEMPTS = 8


class CountingStore:
    """A real store that counts writes: proof that racing attempts really wrote."""

    def __init__(self, store) -> None:
        self._store = store
        self.puts = 0
        self._lock = threading.Lock()

    def put(self, key, data, content_type="application/json"):
        with self._lock:
            self.puts += 1
        return self._store.put(key, data, content_type)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple]:
    store, repo = FilesystemObjectStore(tmp_path / "objects"), SqliteMetadataRepo(tmp_path / "metadata.db")
    store.start()
    repo.start()
    yield store, repo
    repo.close()


@pytest.fixture
def real(s3_connection, postgres_connection) -> Iterator[tuple]:
    client = minio_client(s3_connection)
    store = MinioObjectStore(client, f"wotr-race-{uuid.uuid4().hex[:12]}")
    schema = f"race_{uuid.uuid4().hex[:12]}"
    repo = PostgresMetadataRepo(partial(postgres_pool, postgres_connection, max_size=16), schema=schema)
    store.start()
    repo.start()
    yield store, repo
    repo.close()
    for key in list(store.list("")):
        store.delete(key)
    client.remove_bucket(store.bucket)
    with psycopg.connect(postgres_connection.conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def race(stores: tuple, *, same_content: bool) -> None:
    store, repo = CountingStore(stores[0]), stores[1]
    service = IngestService(store, repo, InMemoryEventBus())
    answers: dict[str, list[Receipt | Exception]] = defaultdict(list)
    lock = threading.Lock()
    ids = [f"race-{uuid.uuid4().hex[:8]}-{n}" for n in range(IDS)]

    def payload(event_id: str, attempt: int) -> dict:
        return {"order": event_id, "v": 1 if same_content else attempt}

    def single(event_id: str, attempt: int, start: threading.Barrier) -> None:
        start.wait()
        try:
            answer: Receipt | Exception = service.ingest(IngestRequest(id=event_id, payload=payload(event_id, attempt)))
        except Conflict as e:
            answer = e
        with lock:
            answers[event_id].append(answer)

    def grouped(event_id: str, attempt: int, start: threading.Barrier) -> None:
        # A flush of concurrent requests: this id's attempt shares an NDJSON object with fresh events.
        items = [IngestRequest(payload={"filler": k}) for k in range(3)]
        items.insert(1, IngestRequest(id=event_id, payload=payload(event_id, attempt)))
        start.wait()
        answer = service.ingest_many(items)[1]
        with lock:
            answers[event_id].append(answer)

    with ThreadPoolExecutor(max_workers=ATTEMPTS * 4) as pool:
        for event_id in ids:
            start = threading.Barrier(ATTEMPTS, timeout=60)
            for attempt in range(ATTEMPTS):
                way = grouped if attempt % 3 == 2 else single
                pool.submit(way, event_id, attempt, start)
    # Grouped attempts always write (their flush has fresh events); beyond those, racing
    # single attempts did write objects of their own: the race was real.
    assert store.puts - 2 * IDS > IDS, store.puts

    rows = repo.find(ids)
    assert sorted(rows) == sorted(ids)  # exactly one row per id
    referenced = set()
    for event_id in ids:
        meta = rows[event_id]
        body = event_bytes(meta, store.get(meta.object_key))  # raises on any mismatch
        assert sha256_hex(body) == meta.checksum and len(body) == meta.size
        event = decode_event(body)
        assert event.id == event_id
        referenced.add(meta.object_key)
        got = answers[event_id]
        assert len(got) == ATTEMPTS
        new = [a for a in got if isinstance(a, Receipt) and not a.duplicate]
        assert len(new) == 1, got  # exactly one attempt created the event ...
        assert (new[0].object_key, new[0].line) == (meta.object_key, meta.line)  # ... the one the row names
        for a in got:
            if isinstance(a, Receipt):
                assert (a.object_key, a.line) == (meta.object_key, meta.line)
            else:
                assert isinstance(a, Conflict) and event_id in str(a) and not same_content
        if same_content:
            assert all(isinstance(a, Receipt) for a in got)
        else:
            assert Counter(type(a).__name__ for a in got)["Conflict"] == ATTEMPTS - 1
    # No loser's object is left: every raw object holds at least one recorded event.
    day_rows = {m.object_key for m in rows.values()}
    others = {k for k in store.list("raw/")} - day_rows
    for key in others:  # objects of the fresh filler events of grouped flushes
        lines = store.get(key).split(b"\n")[:-1]
        fillers = [decode_event(line) for line in lines]
        assert any(repo.find([e.id]) for e in fillers), key
    assert referenced <= set(store.list("raw/"))


@pytest.mark.parametrize("same_content", [False, True], ids=["different-payloads", "identical-retries"])
def test_racing_attempts_on_the_embedded_stores(embedded, same_content):
    race(embedded, same_content=same_content)


@pytest.mark.parametrize("same_content", [False, True], ids=["different-payloads", "identical-retries"])
def test_racing_attempts_on_the_s3_server_and_postgresql(real, same_content):
    race(real, same_content=same_content)


def test_shuffled_replays_of_accepted_events_stay_duplicates(embedded):
    """After the race, any later retry in any order answers the first receipt or 409."""
    store, repo = embedded
    service = IngestService(store, repo, InMemoryEventBus())
    first = {i: service.ingest(IngestRequest(id=f"late-{i}", payload={"n": i})) for i in range(20)}
    order = list(range(20)) * 3
    random.Random(7).shuffle(order)
    for i in order:
        again = service.ingest(IngestRequest(id=f"late-{i}", payload={"n": i}))
        assert again.duplicate and again.object_key == first[i].object_key
        with pytest.raises(Conflict):
            service.ingest(IngestRequest(id=f"late-{i}", payload={"n": i + 1}))
    assert repo.count() == 20 and len(list(store.list("raw/"))) == 20
