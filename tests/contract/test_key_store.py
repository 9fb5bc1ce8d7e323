"""Contract of the KeyStore port: keys stored hashed, found by id, listed, revoked; run
against every key store adapter (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wotr_domain.errors import Conflict, NotFound, Unavailable
from wotr_domain.models import WriteKey

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def issue(name: str = "web", source: str | None = "web-app", at: datetime = T0) -> tuple[WriteKey, str]:
    return WriteKey.issue(name, at, source)


def test_a_key_is_stored_hashed_and_read_back_by_its_id(key_store):
    record, key = issue()
    key_store.add(record)
    found = key_store.get(record.id)
    assert found == record
    assert found.verifies(key) and not found.verifies(key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert key not in repr(found) and key.rsplit("_", 1)[1] not in repr(found)  # only the hash is kept
    assert WriteKey.id_of(key) == record.id


def test_an_unknown_id_is_not_found(key_store):
    with pytest.raises(NotFound):
        key_store.get("0123456789abcdef")


def test_adding_an_id_twice_is_a_conflict_and_keeps_the_first(key_store):
    record, _ = issue("first")
    key_store.add(record)
    with pytest.raises(Conflict):
        key_store.add(WriteKey(id=record.id, name="second", secret_hash="00" * 32, created_at=T0))
    assert key_store.get(record.id).name == "first"


def test_list_gives_every_key_oldest_first_revoked_ones_included(key_store):
    assert key_store.list() == []
    records = [issue(f"k{i}", None if i % 2 else "src", T0 + timedelta(minutes=i))[0] for i in (2, 0, 1)]
    for record in records:
        key_store.add(record)
    key_store.revoke(records[0].id, T0 + timedelta(hours=1))
    listed = key_store.list()
    assert [k.name for k in listed] == ["k0", "k1", "k2"]
    assert [k.revoked for k in listed] == [False, False, True]
    assert [k.source for k in listed] == ["src", None, "src"]


def test_revoke_marks_the_key_once_and_keeps_the_first_time(key_store):
    record, key = issue()
    key_store.add(record)
    first = key_store.revoke(record.id, T0 + timedelta(hours=1))
    again = key_store.revoke(record.id, T0 + timedelta(hours=2))
    assert first.revoked_at == again.revoked_at == T0 + timedelta(hours=1)
    assert key_store.get(record.id).revoked and key_store.get(record.id).verifies(key)


def test_revoking_an_unknown_key_is_not_found(key_store):
    with pytest.raises(NotFound):
        key_store.revoke("0123456789abcdef", T0)


def test_times_round_trip_in_utc(key_store):
    record, _ = issue(at=datetime(2026, 3, 1, 14, 0, 0, 654321, tzinfo=UTC))
    key_store.add(record)
    assert key_store.get(record.id).created_at == record.created_at
    assert key_store.get(record.id).created_at.utcoffset() == timedelta(0)


def test_an_unreachable_store_raises_unavailable(down_key_store):
    with pytest.raises(Unavailable):
        store = down_key_store()
        store.start()
        store.get("0123456789abcdef")
    with pytest.raises(Unavailable):
        down_key_store().check()
