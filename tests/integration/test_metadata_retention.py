"""The metadata table's retention job on the real PostgreSQL: `wotr metadata prune` deletes
published rows older than the bound in batches, never a `stored` one (the outbox), and
never waits on a row another transaction holds."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial

import psycopg
import pytest
from psycopg import sql

from wotr_adapters.connections import PostgresConnection
from wotr_adapters.postgres import PostgresMetadataRepo, postgres_pool
from wotr_domain.models import EventMetadata, EventStatus

NOW = datetime.now(UTC)


def meta(event_id: str, age: timedelta) -> EventMetadata:
    at = NOW - age
    return EventMetadata(id=event_id, object_key=f"raw/dt={at:%Y-%m-%d}/{event_id}.json", size=10,
                         checksum="00" * 32, received_at=at)


@pytest.fixture
def repo(postgres_connection: PostgresConnection) -> Iterator[PostgresMetadataRepo]:
    schema = f"it_prune_{uuid.uuid4().hex[:12]}"
    r = PostgresMetadataRepo(partial(postgres_pool, postgres_connection, max_size=4), schema=schema)
    r.start()
    yield r
    r.close()
    with psycopg.connect(postgres_connection.conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def fill(repo: PostgresMetadataRepo, old: int, old_stored: int, recent: int) -> None:
    old_rows = [meta(f"old-{i:06d}", timedelta(days=40, seconds=i)) for i in range(old)]
    for start in range(0, len(old_rows), 10_000):
        chunk = old_rows[start : start + 10_000]
        repo.record(chunk)
        repo.mark_published([m.id for m in chunk], NOW)
    repo.record([meta(f"pending-{i}", timedelta(days=60)) for i in range(old_stored)])
    recent_rows = [meta(f"new-{i}", timedelta(days=29)) for i in range(recent)]
    repo.record(recent_rows)
    repo.mark_published([m.id for m in recent_rows], NOW)


def prune_cli(conn: PostgresConnection, schema: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "POSTGRES_", "CLICKHOUSE_"))}
    env |= {"WOTR_PROFILE": "local", "POSTGRES_HOST": conn.host, "POSTGRES_PORT": str(conn.port),
            "POSTGRES_USER": conn.user, "POSTGRES_PASSWORD": conn.password, "POSTGRES_DB": conn.dbname,
            "POSTGRES_SCHEMA": schema}
    return subprocess.run([sys.executable, "-m", "wotr_apps.cli", "metadata", "prune", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_wotr_metadata_prune_deletes_old_published_rows_in_batches(repo, postgres_connection):
    fill(repo, old=25_000, old_stored=300, recent=1_000)
    out = prune_cli(postgres_connection, repo.schema, "--older-than", "30", "--batch-size", "10000")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    summary = lines[-1]
    print(f"\n{summary}")
    assert summary.startswith("pruned 25000 published rows received before ") and " in 3 batches " in summary
    assert "1300 rows left, 300 of them stored" in summary
    assert lines[:-1] == ["batch 1: 10000 rows deleted (10000 so far)", "batch 2: 10000 rows deleted (20000 so far)",
                          "batch 3: 5000 rows deleted (25000 so far)"]
    assert (repo.count(), repo.count(EventStatus.STORED), repo.count(EventStatus.PUBLISHED)) == (1300, 300, 1000)
    assert repo.find(["old-000000", "pending-0", "new-0"]).keys() == {"pending-0", "new-0"}
    again = prune_cli(postgres_connection, repo.schema, "--older-than", "30", "-q")
    assert again.returncode == 0 and again.stdout.startswith("pruned 0 published rows"), again.stdout
    # The outbox still hands the old stored rows to the relay.
    claimed = repo.claim_pending(1000, datetime.now(UTC), lease_seconds=60)
    assert len(claimed) == 300 and {m.status for m in claimed} == {EventStatus.STORED}


def test_prune_skips_a_row_another_transaction_holds_and_takes_it_next_time(repo, postgres_connection):
    fill(repo, old=10, old_stored=0, recent=0)
    cutoff = NOW - timedelta(days=30)
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with psycopg.connect(postgres_connection.conninfo) as db:
            db.execute(sql.SQL("SELECT id FROM {} WHERE id = 'old-000003' FOR UPDATE").format(
                sql.Identifier(repo.schema, "event_metadata")))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        assert repo.prune_published(cutoff, 100) == 9  # not waiting for the lock
        assert time.monotonic() - began < 5
        assert repo.find(["old-000003"]).keys() == {"old-000003"}
    finally:
        release.set()
        holder.join(30)
    assert repo.prune_published(cutoff, 100) == 1
    assert repo.count() == 0


def test_prune_on_an_unreachable_database_exits_3_naming_it(postgres_connection):
    from dataclasses import replace

    out = prune_cli(replace(postgres_connection, port=1), "public", "--older-than", "30")
    assert out.returncode == 3
    ours = [line for line in out.stderr.splitlines() if line.startswith("wotr metadata:")]  # beside the pool's warnings
    assert ours and ours[0].startswith("wotr metadata: postgresql is unavailable"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
