"""Replay from the raw archive on in-memory adapters: verified bytes only, idempotent."""

from __future__ import annotations

from datetime import date

import pytest

from wotr_domain.codec import decode_event
from wotr_domain.models import IngestRequest
from wotr_domain.services import AnalyticsLoader, Replay


def accepted_on_two_days(ingest, clock) -> list[str]:
    ids = [ingest.ingest(IngestRequest(payload={"n": i}, source="web")).id for i in range(3)]  # 2026-05-17
    clock.advance(60)  # 2026-05-18
    ids += [r.id for r in ingest.ingest_batch([IngestRequest(payload={"n": i}, source="app") for i in range(3, 7)])]
    return ids


def test_replay_republishes_exactly_the_archived_bytes_of_the_range(ingest, store, repo, bus, clock):
    ids = accepted_on_two_days(ingest, clock)
    published_by_api = {m.key: m.value for m in bus.messages()}
    bus.logs[bus.topic].clear()
    report = Replay(repo, store, bus).run(date(2026, 5, 17), date(2026, 5, 18))
    assert (report.events, report.objects, report.verified, report.published) == (7, 4, 7, 7)
    assert (report.mismatches, report.missing) == (0, 0)
    replayed = {m.key: m.value for m in bus.messages()}
    assert replayed == published_by_api and sorted(replayed) == sorted(ids)
    assert [decode_event(v).id for v in replayed.values()] == list(replayed)


def test_replay_selects_by_date_and_source_and_a_dry_run_publishes_nothing(ingest, store, repo, bus, clock):
    accepted_on_two_days(ingest, clock)
    bus.logs[bus.topic].clear()
    assert Replay(repo, store, bus).run(date(2026, 5, 18)).published == 4
    bus.logs[bus.topic].clear()
    web = Replay(repo, store, bus).run(date(2026, 5, 17), date(2026, 5, 18), source="web")
    assert web.published == 3 and {decode_event(m.value).source for m in bus.messages()} == {"web"}
    bus.logs[bus.topic].clear()
    dry = Replay(repo, store, bus).run(date(2026, 5, 17), date(2026, 5, 18), dry_run=True)
    assert (dry.verified, dry.published, bus.messages()) == (7, 0, [])


def test_missing_and_mismatching_bytes_are_counted_never_published(ingest, store, repo, bus, clock):
    gone = ingest.ingest(IngestRequest(payload={"n": "gone"}))
    bent = ingest.ingest(IngestRequest(payload={"n": "bent"}))
    good = ingest.ingest(IngestRequest(payload={"n": "good"}))
    store.delete(gone.object_key)
    store.put(bent.object_key, store.get(bent.object_key).replace(b'"bent"', b'"BENT"'))
    store.put("raw/dt=2026-05-17/orphan.json", store.get(good.object_key))  # named by no row: not an event
    bus.logs[bus.topic].clear()
    report = Replay(repo, store, bus).run(date(2026, 5, 17))
    assert (report.events, report.published, report.missing, report.mismatches) == (3, 1, 1, 1)
    assert [m.key for m in bus.messages()] == [good.id]


def test_replaying_twice_leaves_the_analytics_rows_unchanged(ingest, store, repo, bus, sink, clock):
    ids = accepted_on_two_days(ingest, clock)
    loader = AnalyticsLoader(bus.subscribe("replay-test"), sink)
    loader.run_once(timeout=0)
    before = dict(sink.rows)
    sink.rows.clear()  # the table is lost
    for _ in range(2):
        Replay(repo, store, bus).run(date(2026, 5, 17), date(2026, 5, 18))
        loader.run_once(timeout=0)
    assert sorted(sink.rows) == sorted(ids) and sink.rows == before


def test_a_rate_limit_spaces_the_publishes(ingest, store, repo, bus, clock):
    accepted_on_two_days(ingest, clock)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    report = Replay(repo, store, bus, sleep=sleep, monotonic=lambda: now[0]).run(
        date(2026, 5, 17), date(2026, 5, 18), rate=2)
    assert report.published == 7
    assert sum(slept) == pytest.approx(3.5)  # 7 events at 2 per second, none before their time


def test_bad_ranges_and_rates_are_refused(store, repo, bus):
    with pytest.raises(ValueError):
        Replay(repo, store, bus).run(date(2026, 5, 18), date(2026, 5, 17))
    with pytest.raises(ValueError):
        Replay(repo, store, bus).run(date(2026, 5, 18), rate=0)
