"""PostgreSQL metadata repo beyond the port contract: concurrent relays, concurrent
migrations, large batches and time zones, on the real server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import psycopg
import pytest
from psycopg import sql

from wotr_adapters.connections import PostgresConnection
from wotr_adapters.postgres import MIGRATIONS, PostgresMetadataRepo, postgres_pool
from wotr_domain.models import EventMetadata

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def meta(event_id: str, received_at: datetime = T0) -> EventMetadata:
    return EventMetadata(id=event_id, object_key=f"raw/{event_id}.json", size=1, checksum="00", received_at=received_at)


@pytest.fixture
def schema(postgres_connection: PostgresConnection) -> Iterator[str]:
    name = f"it_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_connection.conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def new_repo(conn: PostgresConnection, schema: str) -> PostgresMetadataRepo:
    return PostgresMetadataRepo(partial(postgres_pool, conn, max_size=4), schema=schema)


@pytest.fixture
def repo(postgres_connection: PostgresConnection, schema: str) -> Iterator[PostgresMetadataRepo]:
    r = new_repo(postgres_connection, schema)
    r.start()
    yield r
    r.close()


def test_two_relays_claiming_at_once_get_disjoint_rows(repo: PostgresMetadataRepo):
    repo.record([meta(f"c-{i:04d}", T0 + timedelta(milliseconds=i)) for i in range(400)])
    claims: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def relay(n: int) -> None:
        start.wait()
        while batch := repo.claim_pending(limit=25, older_than=datetime.now(UTC), lease_seconds=60):
            claims[n].extend(r.id for r in batch)

    threads = [threading.Thread(target=relay, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not set(claims[0]) & set(claims[1])
    assert sorted(claims[0] + claims[1]) == [f"c-{i:04d}" for i in range(400)]


def test_repos_starting_together_migrate_the_schema_once(postgres_connection: PostgresConnection, schema: str):
    repos = [new_repo(postgres_connection, schema) for _ in range(4)]
    errors: list[BaseException] = []

    def start(r: PostgresMetadataRepo) -> None:
        try:
            r.start()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(r,)) for r in repos]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        with psycopg.connect(postgres_connection.conninfo) as db:
            versions = db.execute(sql.SQL("SELECT version FROM {} ORDER BY version").format(sql.Identifier(schema, "schema_version"))).fetchall()
        assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        for r in repos:
            r.close()


def test_a_large_batch_with_repeats_and_known_ids(repo: PostgresMetadataRepo):
    repo.record([meta(f"k-{i}") for i in range(0, 5000, 2)])  # the even ids exist already
    batch = [meta(f"k-{i}") for i in range(5000)] + [meta("k-1")]
    recorded = repo.record(batch)
    assert [r.created for r in recorded[:4]] == [False, True, False, True]
    assert sum(r.created for r in recorded) == 2500
    assert recorded[-1].created is False and recorded[-1].metadata == batch[1]
    assert repo.count() == 5000


def test_times_come_back_in_utc_whatever_zone_they_went_in(repo: PostgresMetadataRepo):
    local = datetime(2026, 3, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    repo.record([meta("tz-1", local)])
    row = repo.get("tz-1")
    assert row.received_at == local
    assert row.received_at.utcoffset() == timedelta(0)
    assert repo.mark_published(["tz-1", "tz-1"], local) == 1
    assert repo.get("tz-1").published_at.utcoffset() == timedelta(0)


def test_a_restarted_repo_keeps_its_rows(postgres_connection: PostgresConnection, schema: str, repo: PostgresMetadataRepo):
    repo.record([meta("r-1")])
    again = new_repo(postgres_connection, schema)
    again.start()
    try:
        assert again.get("r-1") == meta("r-1")
    finally:
        again.close()
