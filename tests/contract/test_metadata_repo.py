"""Contract of the MetadataRepo port: idempotent record, status changes and the outbox
lease; run against every metadata repo adapter."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from wotr_domain.errors import NotFound, Refused, Unavailable
from wotr_domain.models import ArchivedEvent, EventMetadata, EventStatus

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def meta(event_id: str, received_at: datetime = T0, **changes) -> EventMetadata:
    fields = dict(
        id=event_id,
        object_key=f"raw/dt={received_at:%Y-%m-%d}/{event_id}.json",
        size=42,
        checksum="ab" * 32,
        received_at=received_at,
        source="web",
        type="click",
    )
    fields.update(changes)
    return EventMetadata(**fields)


def test_record_inserts_and_get_reads_back_the_same_row(metadata_repo):
    row = meta("e-1")
    (recorded,) = metadata_repo.record([row])
    assert recorded.created is True
    assert recorded.metadata == row
    assert metadata_repo.get("e-1") == row
    assert metadata_repo.get("e-1").status is EventStatus.STORED


def test_recording_an_existing_id_keeps_the_first_row(metadata_repo):
    first = meta("e-2")
    metadata_repo.record([first])
    (again,) = metadata_repo.record([meta("e-2", T0 + timedelta(hours=1), size=7, object_key="raw/other.json")])
    assert again.created is False
    assert again.metadata == first
    assert metadata_repo.get("e-2") == first


def test_a_batch_with_a_repeated_id_creates_it_once(metadata_repo):
    rows = [meta("b-1"), meta("b-2"), meta("b-1", size=99)]
    recorded = metadata_repo.record(rows)
    assert [r.created for r in recorded] == [True, True, False]
    assert recorded[2].metadata == rows[0]
    assert metadata_repo.count() == 2


def test_get_of_an_unknown_id_raises_not_found(metadata_repo):
    with pytest.raises(NotFound):
        metadata_repo.get("no-such-event")


def test_find_returns_only_the_ids_that_exist(metadata_repo):
    metadata_repo.record([meta("f-1"), meta("f-2")])
    found = metadata_repo.find(["f-1", "f-3", "f-2"])
    assert set(found) == {"f-1", "f-2"}
    assert found["f-1"] == meta("f-1")
    assert metadata_repo.find([]) == {}


def test_mark_published_changes_status_once(metadata_repo):
    metadata_repo.record([meta("p-1"), meta("p-2"), meta("p-3")])
    at = T0 + timedelta(seconds=3)
    assert metadata_repo.mark_published(["p-1", "p-2", "missing"], at) == 2
    assert metadata_repo.mark_published(["p-1"], at) == 0
    row = metadata_repo.get("p-1")
    assert row.status is EventStatus.PUBLISHED
    assert row.published_at == at
    assert metadata_repo.get("p-3").status is EventStatus.STORED
    assert metadata_repo.count(EventStatus.PUBLISHED) == 2
    assert metadata_repo.count(EventStatus.STORED) == 1
    assert metadata_repo.count() == 3


def test_claim_pending_returns_stored_rows_recorded_before_the_cutoff_oldest_first(metadata_repo):
    metadata_repo.record([meta(f"o-{i}", T0 + timedelta(seconds=i)) for i in (3, 0, 2, 1)])
    metadata_repo.mark_published(["o-1"], T0)
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    time.sleep(0.05)
    metadata_repo.record([meta("o-late", T0 - timedelta(days=1))])  # received long ago, recorded after the cutoff
    claimed = metadata_repo.claim_pending(limit=10, older_than=cutoff, lease_seconds=60)
    assert [r.id for r in claimed] == ["o-0", "o-2", "o-3"]


def test_claimed_rows_are_leased_to_one_caller(metadata_repo):
    metadata_repo.record([meta(f"l-{i}", T0 + timedelta(seconds=i)) for i in range(4)])
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    first = metadata_repo.claim_pending(limit=2, older_than=cutoff, lease_seconds=60)
    second = metadata_repo.claim_pending(limit=10, older_than=cutoff, lease_seconds=60)
    third = metadata_repo.claim_pending(limit=10, older_than=cutoff, lease_seconds=60)
    assert [r.id for r in first] == ["l-0", "l-1"]
    assert [r.id for r in second] == ["l-2", "l-3"]
    assert third == []


def test_an_expired_lease_makes_rows_claimable_again(metadata_repo):
    metadata_repo.record([meta("x-1")])
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    assert [r.id for r in metadata_repo.claim_pending(10, cutoff, lease_seconds=0)] == ["x-1"]
    assert [r.id for r in metadata_repo.claim_pending(10, cutoff, lease_seconds=60)] == ["x-1"]
    assert metadata_repo.claim_pending(10, cutoff, lease_seconds=60) == []


def test_released_rows_are_claimable_again_at_once(metadata_repo):
    metadata_repo.record([meta(f"r-{i}", T0 + timedelta(seconds=i)) for i in range(3)])
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    claimed = metadata_repo.claim_pending(10, cutoff, lease_seconds=60)
    assert [r.id for r in claimed] == ["r-0", "r-1", "r-2"]
    assert metadata_repo.claim_pending(10, cutoff, lease_seconds=60) == []  # leased: not claimable until released
    assert metadata_repo.release(["r-0", "r-2"]) == 2
    assert [r.id for r in metadata_repo.claim_pending(10, cutoff, lease_seconds=60)] == ["r-0", "r-2"]
    assert metadata_repo.claim_pending(10, cutoff, lease_seconds=60) == []
    assert metadata_repo.release(["r-0", "r-0", "r-1", "r-2"]) == 3  # each row once
    assert metadata_repo.release(["r-1"]) == 0  # no lease left to release
    assert [r.id for r in metadata_repo.claim_pending(10, cutoff, lease_seconds=60)] == ["r-0", "r-1", "r-2"]
    assert {r.status for r in metadata_repo.find(["r-0", "r-1", "r-2"]).values()} == {EventStatus.STORED}


def test_release_never_touches_published_rows(metadata_repo):
    metadata_repo.record([meta("rp-1"), meta("rp-2")])
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    assert len(metadata_repo.claim_pending(10, cutoff, lease_seconds=60)) == 2
    at = T0 + timedelta(seconds=5)
    metadata_repo.mark_published(["rp-1"], at)
    assert metadata_repo.release(["rp-1", "rp-2"]) == 1
    row = metadata_repo.get("rp-1")
    assert (row.status, row.published_at) == (EventStatus.PUBLISHED, at)
    assert [r.id for r in metadata_repo.claim_pending(10, cutoff, lease_seconds=60)] == ["rp-2"]
    assert metadata_repo.count(EventStatus.PUBLISHED) == 1


def test_release_of_unknown_ids_returns_zero(metadata_repo):
    assert metadata_repo.release([]) == 0
    assert metadata_repo.release(["no-such-event", "nor-this-one"]) == 0
    metadata_repo.record([meta("ru-1")])
    assert metadata_repo.release(["ru-1", "no-such-event"]) == 0  # stored, but it holds no lease
    assert metadata_repo.count() == 1


def test_published_rows_are_never_pending(metadata_repo):
    metadata_repo.record([meta("d-1")])
    metadata_repo.mark_published(["d-1"], T0)
    time.sleep(0.05)
    assert metadata_repo.claim_pending(10, datetime.now(UTC), lease_seconds=60) == []


def test_an_unreachable_repo_raises_unavailable(down_metadata_repo):
    with pytest.raises(Unavailable):
        repo = down_metadata_repo()
        repo.start()
        repo.record([meta("u-1")])
    with pytest.raises(Unavailable):
        down_metadata_repo().get("u-1")
    with pytest.raises(Unavailable):
        down_metadata_repo().check()
    with pytest.raises(Unavailable):
        down_metadata_repo().release(["u-1"])


def test_the_line_of_a_batch_object_round_trips(metadata_repo):
    rows = [meta(f"ln-{i}", object_key="raw/dt=2026-03-01/batch-1.ndjson", line=i) for i in range(3)]
    metadata_repo.record(rows + [meta("whole")])
    assert [metadata_repo.get(f"ln-{i}").line for i in range(3)] == [0, 1, 2]
    assert metadata_repo.get("whole").line is None
    assert metadata_repo.find(["ln-2"])["ln-2"] == rows[2]


def test_the_content_fingerprint_round_trips_and_the_first_one_stays(metadata_repo):
    (first,) = metadata_repo.record([meta("fp-1", fingerprint="f1" * 32)])
    (second,) = metadata_repo.record([meta("fp-1", fingerprint="f2" * 32, object_key="raw/dt=2026-03-01/other.json")])
    assert first.created and not second.created
    assert second.metadata.fingerprint == "f1" * 32
    assert metadata_repo.get("fp-1").fingerprint == "f1" * 32


def test_received_between_lists_a_days_rows_by_object_and_line(metadata_repo):
    day = datetime(2026, 3, 2, tzinfo=UTC)
    batch = [meta(f"rb-{i}", day + timedelta(hours=1), object_key="raw/dt=2026-03-02/batch-b.ndjson", line=i)
             for i in (2, 0, 1)]
    metadata_repo.record(batch + [
        meta("rb-a", day, object_key="raw/dt=2026-03-02/a.json"),
        meta("rb-last", day + timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)),
        meta("rb-before", day - timedelta(microseconds=1)),
        meta("rb-next", day + timedelta(days=1)),
    ])
    rows = list(metadata_repo.received_between(day, day + timedelta(days=1)))
    assert [r.id for r in rows] == ["rb-a", "rb-0", "rb-1", "rb-2", "rb-last"]
    assert rows[1] == batch[1]


def test_archived_between_gives_where_a_days_events_are_and_their_checksums(metadata_repo):
    day = datetime(2026, 3, 3, tzinfo=UTC)
    batch = [meta(f"ab-{i}", day + timedelta(hours=2), object_key="raw/dt=2026-03-03/batch-b.ndjson", line=i,
                  checksum=f"{i}" * 64) for i in (1, 0)]
    lone = meta("ab-a", day, object_key="raw/dt=2026-03-03/a.json", checksum="a" * 64)
    last = meta("ab-last", day + timedelta(hours=23, minutes=59, seconds=59, microseconds=999999))
    metadata_repo.record(batch + [lone, last, meta("ab-before", day - timedelta(microseconds=1)),
                                  meta("ab-next", day + timedelta(days=1))])
    metadata_repo.mark_published(["ab-a"], day)  # published or not, an event is in the archive
    entries = list(metadata_repo.archived_between(day, day + timedelta(days=1)))
    assert sorted(entries, key=lambda e: e.id) == [
        ArchivedEvent(m.object_key, m.line, m.id, m.checksum) for m in sorted([*batch, lone, last], key=lambda m: m.id)
    ]
    assert list(metadata_repo.archived_between(day - timedelta(days=2), day - timedelta(days=1))) == []


def test_text_a_store_cannot_hold_is_refused_and_writes_nothing(metadata_repo):
    """A permanent refusal is `Refused`, never `Unavailable`: retrying cannot help.

    PostgreSQL text cannot hold U+0000; the other repos accept it, and the ingest edge
    rejects control characters before any store sees them (same rule on every profile).
    """
    try:
        metadata_repo.record([meta("nul-1", source="we\x00b"), meta("nul-ok")])
    except Refused:
        assert metadata_repo.find(["nul-1", "nul-ok"]) == {}
    else:
        assert metadata_repo.get("nul-1").source == "we\x00b"


def test_prune_published_deletes_old_published_rows_a_batch_at_a_time(metadata_repo):
    """Retention (`wotr metadata prune`): published rows received before the bound go, at
    most `limit` per call; stored rows (the outbox) and newer rows stay."""
    cutoff = T0 + timedelta(days=30)
    old = [meta(f"pr-{i}", T0 + timedelta(minutes=i)) for i in range(5)]
    metadata_repo.record(old + [meta("pr-stored", T0), meta("pr-new", cutoff), meta("pr-newer", cutoff + timedelta(days=1))])
    metadata_repo.mark_published([m.id for m in old] + ["pr-new", "pr-newer"], T0 + timedelta(days=31))
    assert metadata_repo.prune_published(cutoff, limit=3) == 3
    assert metadata_repo.prune_published(cutoff, limit=3) == 2
    assert metadata_repo.prune_published(cutoff, limit=3) == 0
    assert set(metadata_repo.find([m.id for m in old])) == set()
    assert set(metadata_repo.find(["pr-stored", "pr-new", "pr-newer"])) == {"pr-stored", "pr-new", "pr-newer"}
    assert metadata_repo.get("pr-stored").status is EventStatus.STORED
    assert (metadata_repo.count(), metadata_repo.count(EventStatus.STORED)) == (3, 1)
    assert [r.id for r in metadata_repo.received_between(T0, cutoff)] == ["pr-stored"]


def test_prune_never_takes_a_stored_row_out_of_the_outbox(metadata_repo):
    metadata_repo.record([meta("po-1", T0)])
    assert metadata_repo.prune_published(T0 + timedelta(days=365), limit=100) == 0
    time.sleep(0.05)
    assert [r.id for r in metadata_repo.claim_pending(10, datetime.now(UTC), lease_seconds=60)] == ["po-1"]
