"""S3 object store beyond the port contract: stored metadata, listing order across
"directories" and pages, and how fast an outage is reported, on the real server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from minio.deleteobjects import DeleteObject

from wotr_adapters.connections import S3Connection
from wotr_adapters.minio import CHECKSUM_META, MinioObjectStore, minio_client
from wotr_domain.errors import Unavailable


@pytest.fixture
def store(s3_connection: S3Connection) -> Iterator[MinioObjectStore]:
    client = minio_client(s3_connection)
    s = MinioObjectStore(client, f"wotr-it-{uuid.uuid4().hex[:12]}")
    s.start()
    yield s
    doomed = (DeleteObject(o.object_name) for o in client.list_objects(s.bucket, recursive=True))
    assert list(client.remove_objects(s.bucket, doomed)) == []
    client.remove_bucket(s.bucket)
    s.close()


def test_content_type_and_checksum_are_stored_with_the_object(store: MinioObjectStore):
    ref = store.put("raw/dt=2026-01-01/m.json", b'{"a":1}', "application/json")
    stat = store._client.stat_object(store.bucket, "raw/dt=2026-01-01/m.json")
    assert stat.content_type == "application/json"
    assert stat.metadata[f"x-amz-meta-{CHECKSUM_META}"] == ref.checksum


def test_listing_is_lexicographic_across_nested_keys(store: MinioObjectStore):
    keys = ["a/b.json", "a-c", "a/b/c.json", "a0", "a/a.json", "b"]
    for key in keys:
        store.put(key, b"x")
    assert list(store.list("a")) == sorted(k for k in keys if k.startswith("a"))
    assert list(store.list("")) == sorted(keys)


def test_listing_spans_several_pages(store: MinioObjectStore):
    keys = [f"raw/dt=2026-01-01/{i:05d}.json" for i in range(1100)]  # a page holds 1000
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, b"{}"), keys))
    assert list(store.list("raw/")) == keys


def test_an_outage_is_reported_within_seconds():
    store = MinioObjectStore(minio_client(S3Connection(endpoint="127.0.0.1:1")), "raw-data")
    started = time.monotonic()
    with pytest.raises(Unavailable, match="object store"):
        store.put("raw/x.json", b"{}")
    assert time.monotonic() - started < 5
