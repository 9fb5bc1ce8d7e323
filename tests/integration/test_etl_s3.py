"""The ETL on the `local` profile: raw objects in a real S3 bucket, read and written by
Spark through s3a, exactly as `wotr etl` runs it (a subprocess configured by the same
environment variables as the API). The Parquet is read back with pyarrow's S3 client."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from wotr_adapters.connections import S3Connection
from wotr_adapters.memory import InMemoryEventBus, InMemoryMetadataRepo
from wotr_adapters.minio import MinioObjectStore, minio_client
from wotr_apps.etl.jars import ensure_jars
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


def _etl(conn: S3Connection, bucket: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "WOTR_PROFILE": "local",
        "WOTR_DATA_DIR": str(tmp),
        "MINIO_ENDPOINT": conn.endpoint,
        "MINIO_ACCESS_KEY": conn.access_key,
        "MINIO_SECRET_KEY": conn.secret_key,
        "MINIO_BUCKET": bucket,
        "MINIO_REGION": conn.region,
        "MINIO_SECURE": str(conn.secure).lower(),
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
def test_etl_reads_and_writes_the_bucket_through_s3a(s3_connection, bucket, s3a_jars, tmp_path):
    now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    service = IngestService(bucket, InMemoryMetadataRepo(), InMemoryEventBus(), clock=lambda: now)
    ids = {}
    for i in range(6):
        now = datetime.combine(D1 if i < 4 else D2, datetime.min.time(), UTC) + timedelta(hours=i, microseconds=i)
        receipt = service.ingest(IngestRequest(payload={"i": i}, source="it", type="etl"))
        ids[receipt.id] = now
    bad = f"raw/dt={D2.isoformat()}/torn.json"
    bucket._client.put_object(bucket.bucket, bad, io.BytesIO(b'{"id": "t'), 9, content_type="application/json")

    first = _etl(s3_connection, bucket.bucket, tmp_path)

    assert f"source s3a://{bucket.bucket}/raw" in first.stdout
    assert "6 written, 1 rejected" in first.stdout, first.stdout
    rows = _read(s3_connection, f"{bucket.bucket}/curated/events")
    assert sorted(r["event_id"] for r in rows) == sorted(ids)
    assert all(r["received_at"] == ids[r["event_id"]] and json.loads(r["payload"])["i"] >= 0 for r in rows)
    assert {r["dt"] for r in rows} == {D1, D2}
    assert all(r["object_key"] == f"raw/dt={r['dt'].isoformat()}/{r['event_id']}.json" for r in rows)
    (rejected,) = _read(s3_connection, f"{bucket.bucket}/curated/rejected")
    assert (rejected["object_key"], rejected["reason"], rejected["raw"]) == (bad, "not valid JSON", '{"id": "t')
    parquet = sorted(k for k in bucket.list("curated/events/") if k.endswith(".parquet"))
    assert len(parquet) == 2

    again = _etl(s3_connection, bucket.bucket, tmp_path, "--date", D1.isoformat())

    assert "4 written, 0 rejected" in again.stdout, again.stdout
    assert _read(s3_connection, f"{bucket.bucket}/curated/events") == rows
    assert len([k for k in bucket.list("curated/events/") if k.endswith(".parquet")]) == 2
    history = _etl(s3_connection, bucket.bucket, tmp_path, "--history").stdout.splitlines()
    assert [line.split()[3] for line in history[1:3]] == ["succeeded", "succeeded"]
    assert [line.split()[4] for line in history[1:3]] == ["2026-03-01..2026-03-02", "2026-03-01"]
