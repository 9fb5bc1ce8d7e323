"""The ETL on the `local` profile: raw objects in a real S3 bucket, read and written by
Spark through s3a, their metadata in a real PostgreSQL schema, exactly as `wotr etl` runs
it (a subprocess configured by the same environment variables as the API). The Parquet
is read back with pyarrow's S3 client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import msgspec
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from wotr_adapters.connections import PostgresConnection, S3Connection
from wotr_adapters.memory import InMemoryEventBus
from wotr_adapters.minio import MinioObjectStore, minio_client
from wotr_adapters.postgres import PostgresMetadataRepo, postgres_pool
from wotr_apps.etl.jars import ensure_jars
from wotr_domain.codec import decode_event, encode
from wotr_domain.models import IngestRequest
from wotr_domain.services import IngestService

D1, D2 = date(2026, 3, 1), date(2026, 3, 2)


@pytest.fixture(scope="module")
def s3a_jars() -> list[Path]:
    """The connector jars, resolved once per machine (minutes the very first time)."""
    return ensure_jars()


@pytest.fixture
def bucket(s3_connection: S3Connection) -> Iterator[MinioObjectStore]:
    client = minio_client(s3_connection)
    store = MinioObjectStore(client, f"wotr-etl-{uuid.uuid4().hex[:12]}")
    store.start()
    yield store
    for item in client.list_objects(store.bucket, recursive=True):
        client.remove_object(store.bucket, item.object_name)
    client.remove_bucket(store.bucket)
    store.close()


@pytest.fixture
def metadata(postgres_connection: PostgresConnection) -> Iterator[PostgresMetadataRepo]:
    """The metadata repository in a fresh schema of the PostgreSQL server."""
    repo = PostgresMetadataRepo(partial(postgres_pool, postgres_connection, max_size=2),
                                schema=f"etl_{uuid.uuid4().hex[:12]}")
    repo.start()
    yield repo
    repo.close()
    with psycopg.connect(postgres_connection.conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(repo.schema)))


def _etl(conn: S3Connection, bucket: str, pg: PostgresConnection, schema: str, tmp: Path,
         *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "WOTR_PROFILE": "local",
        "WOTR_DATA_DIR": str(tmp),
        "MINIO_ENDPOINT": conn.endpoint,
        "MINIO_ACCESS_KEY": conn.access_key,
        "MINIO_SECRET_KEY": conn.secret_key,
        "MINIO_BUCKET": bucket,
        "MINIO_REGION": conn.region,
        "MINIO_SECURE": str(conn.secure).lower(),
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": pg.user,
        "POSTGRES_PASSWORD": pg.password,
        "POSTGRES_DB": pg.dbname,
        "POSTGRES_SCHEMA": schema,
    }
    done = subprocess.run([sys.executable, "-m", "wotr_apps.etl", *args], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def _s3fs(conn: S3Connection) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key=conn.access_key, secret_key=conn.secret_key, region=conn.region,
                             endpoint_override=conn.endpoint, scheme="https" if conn.secure else "http")


def _read(conn: S3Connection, path: str) -> list[dict]:
    partitioning = ds.partitioning(pa.schema([("dt", pa.date32())]), flavor="hive")
    table = ds.dataset(path, format="parquet", filesystem=_s3fs(conn), partitioning=partitioning).to_table()
    return sorted(table.to_pylist(), key=lambda r: r["object_key"])


@pytest.mark.timeout(1800)
def test_etl_reads_and_writes_the_bucket_through_s3a(s3_connection, postgres_connection, bucket, metadata, s3a_jars,
                                                     tmp_path):
    now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    service = IngestService(bucket, metadata, InMemoryEventBus(), clock=lambda: now)
    singles = {}
    for i in range(6):
        now = datetime.combine(D1 if i < 4 else D2, datetime.min.time(), UTC) + timedelta(hours=i, microseconds=i)
        receipt = service.ingest(IngestRequest(payload={"i": i}, source="it", type="etl"))
        singles[receipt.id] = (receipt.object_key, now)
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    batch = service.ingest_batch([IngestRequest(payload={"b": i}, source="it") for i in range(3)])
    (batch_key,) = {r.object_key for r in batch}
    # What the archive must not curate: an object and a line no metadata row names (orphans),
    # bytes overwritten after their row was recorded (a checksum mismatch), an object gone (missing).
    torn = f"raw/dt={D2.isoformat()}/torn.json"
    bucket.put(torn, b'{"id": "t')
    stray = encode(decode_event(bucket.get(batch_key).split(b"\n")[0])).replace(b'"b":0', b'"b":9')
    bucket.put(batch_key, bucket.get(batch_key) + stray + b"\n")
    (gone, (gone_key, _)), *_ = singles.items()
    bucket.delete(gone_key)
    forged_id, (forged_key, _) = list(singles.items())[-1]
    forged = msgspec.structs.replace(decode_event(bucket.get(forged_key)), payload={"i": 99})
    bucket.put(forged_key, encode(forged))
    etl = partial(_etl, s3_connection, bucket.bucket, postgres_connection, metadata.schema, tmp_path)
    # Curated output of an earlier date as the ETL wrote it before its id column was `id`.
    old_key = "curated/events/dt=2026-02-28/part-00000-old.c000.snappy.parquet"
    old = pa.table({"event_id": ["old-1"], "received_at": pa.array([datetime(2026, 2, 28, tzinfo=UTC)],
                                                                    pa.timestamp("us", tz="UTC"))})
    out = pa.BufferOutputStream()
    pq.write_table(old, out)
    bucket.put(old_key, out.getvalue().to_pybytes())

    first = etl()

    assert pq.read_table(pa.BufferReader(bucket.get(old_key))).to_pylist() == [
        {"id": "old-1", "received_at": datetime(2026, 2, 28, tzinfo=UTC)}]  # migrated in place
    assert bucket.get("curated/_schema") == b"2\n"
    bucket.delete(old_key)

    assert f"source s3a://{bucket.bucket}/raw" in first.stdout
    assert "7 written, 1 rejected, 0 duplicate(s), 2 orphan(s), 1 missing" in first.stdout, first.stdout
    assert "dt=2026-03-02  read         7  written         4  rejected       1  duplicates      0  orphans      2" \
        in first.stdout, first.stdout
    rows = _read(s3_connection, f"{bucket.bucket}/curated/events")
    curated = {k: v for k, v in singles.items() if k not in (gone, forged_id)}
    assert sorted(r["id"] for r in rows) == sorted([*curated, *(r.id for r in batch)])
    for r in rows:
        if r["object_key"] == batch_key:
            assert r["received_at"] == now and json.loads(r["payload"])["b"] in (0, 1, 2)
        else:
            assert (r["object_key"], r["received_at"]) == curated[r["id"]]
            assert json.loads(r["payload"])["i"] < 6
    assert {r["dt"] for r in rows} == {D1, D2}
    (rejected,) = _read(s3_connection, f"{bucket.bucket}/curated/rejected")
    assert (rejected["object_key"], rejected["reason"], rejected["raw"]) == (forged_key, "checksum mismatch",
                                                                             encode(forged).decode())
    parquet = sorted(k for k in bucket.list("curated/events/") if k.endswith(".parquet"))
    assert len(parquet) == 2

    again = etl("--date", D1.isoformat())

    assert "3 written, 0 rejected, 0 duplicate(s), 0 orphan(s), 1 missing" in again.stdout, again.stdout
    assert _read(s3_connection, f"{bucket.bucket}/curated/events") == rows
    assert len([k for k in bucket.list("curated/events/") if k.endswith(".parquet")]) == 2
    history = etl("--history").stdout.splitlines()
    assert [line.split()[3] for line in history[1:3]] == ["succeeded", "succeeded"]
    assert [line.split()[4] for line in history[1:3]] == ["2026-03-01..2026-03-02", "2026-03-01"]
    assert [line.split()[-3:-1] for line in history[1:3]] == [["2", "1"], ["0", "1"]]  # orphans, missing
