"""Contract of the ObjectStore port, run against every object store adapter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryObjectStore
from wotr_domain.errors import NotFound, Unavailable


def test_put_then_get_returns_the_same_bytes_and_a_checksum(object_store):
    data = b'{"payload": {"n": 1}}'
    ref = object_store.put("raw/dt=2026-01-01/a.json", data, "application/json")
    assert ref.key == "raw/dt=2026-01-01/a.json"
    assert ref.size == len(data)
    assert ref.checksum == hashlib.sha256(data).hexdigest()
    assert object_store.get("raw/dt=2026-01-01/a.json") == data


def test_binary_content_round_trips(object_store):
    data = bytes(range(256)) * 40
    object_store.put("bin/blob", data, "application/octet-stream")
    assert object_store.get("bin/blob") == data


def test_put_replaces_an_existing_object(object_store):
    object_store.put("k/x.json", b"first")
    object_store.put("k/x.json", b"second")
    assert object_store.get("k/x.json") == b"second"


def test_get_of_a_missing_key_raises_not_found(object_store):
    with pytest.raises(NotFound):
        object_store.get("raw/nothing-here.json")


def test_exists_tells_present_from_absent(object_store):
    object_store.put("raw/here.json", b"{}")
    assert object_store.exists("raw/here.json") is True
    assert object_store.exists("raw/not-here.json") is False


def test_delete_removes_and_tolerates_missing_keys(object_store):
    object_store.put("raw/gone.json", b"{}")
    object_store.delete("raw/gone.json")
    assert object_store.exists("raw/gone.json") is False
    object_store.delete("raw/gone.json")  # deleting twice is not an error
    with pytest.raises(NotFound):
        object_store.get("raw/gone.json")


def test_list_returns_keys_under_the_prefix_in_order(object_store):
    keys = ["raw/dt=2026-01-02/b.json", "raw/dt=2026-01-01/z.json", "raw/dt=2026-01-01/a.json", "curated/x.parquet"]
    for key in keys:
        object_store.put(key, b"{}")
    assert list(object_store.list("raw/")) == sorted(k for k in keys if k.startswith("raw/"))
    assert list(object_store.list("raw/dt=2026-01-01/")) == ["raw/dt=2026-01-01/a.json", "raw/dt=2026-01-01/z.json"]
    assert list(object_store.list("nothing/")) == []


def test_start_is_idempotent(object_store):
    object_store.put("raw/keep.json", b"{}")
    object_store.start()
    object_store.check()
    assert object_store.get("raw/keep.json") == b"{}"


def test_an_unreachable_store_raises_unavailable(down_object_store):
    with pytest.raises(Unavailable):
        store = down_object_store()
        store.start()
        store.put("raw/x.json", b"{}")
    with pytest.raises(Unavailable):
        down_object_store().get("raw/x.json")
    with pytest.raises(Unavailable):
        down_object_store().check()


def test_location_is_where_a_reader_outside_the_adapter_finds_the_key(object_store):
    key = "curated/events/dt=2026-01-01/part 0.parquet"  # a space: kept as it is, not percent-encoded
    object_store.put(key, b"PAR1")
    if isinstance(object_store, InMemoryObjectStore):
        with pytest.raises(NotFound, match="in-memory"):
            object_store.location(key)
        with pytest.raises(NotFound):
            object_store.location()
        return
    url = object_store.location(key)
    assert url == f"{object_store.location()}/{key}"
    if isinstance(object_store, FilesystemObjectStore):
        assert url.startswith("file:///")
        assert Path(url.removeprefix("file://")).read_bytes() == b"PAR1"
    else:
        assert url.startswith(f"s3://{object_store.bucket}/")
        assert url == f"s3://{object_store.bucket}/{key}"
