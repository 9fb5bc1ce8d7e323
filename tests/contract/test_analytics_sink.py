"""Contract of the AnalyticsSink port: batch writes, idempotent by event id; run against
every sink adapter (in-memory, the in-process ClickHouse engine, a server when configured)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wotr_domain.errors import Unavailable
from wotr_domain.models import AnalyticsRow

T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def row(event_id: str, seconds: int = 0, **changes) -> AnalyticsRow:
    fields = dict(
        id=event_id,
        created_at=T0 + timedelta(seconds=seconds),
        event_time=T0 - timedelta(minutes=1),
        source="web",
        type="click",
        payload='{"example":"hello"}',
        object_key=f"raw/dt=2026-03-01/{event_id}.json",
    )
    fields.update(changes)
    return AnalyticsRow(**fields)


def test_written_rows_read_back_newest_first(analytics_sink):
    rows = [row("a", 1), row("b", 3), row("c", 2)]
    analytics_sink.write(rows)
    assert analytics_sink.latest(10) == [rows[1], rows[2], rows[0]]
    assert analytics_sink.count() == 3


def test_latest_honours_the_limit(analytics_sink):
    analytics_sink.write([row(f"r{i}", i) for i in range(15)])
    latest = analytics_sink.latest(10)
    assert [r.id for r in latest] == [f"r{i}" for i in range(14, 4, -1)]


def test_a_batch_written_twice_counts_once(analytics_sink):
    batch = [row("dup-1", 1), row("dup-2", 2)]
    analytics_sink.write(batch)
    analytics_sink.write(batch)
    analytics_sink.write([row("dup-1", 1)])
    assert analytics_sink.count() == 2
    assert sorted(r.id for r in analytics_sink.latest(10)) == ["dup-1", "dup-2"]


def test_missing_event_time_and_empty_fields_round_trip(analytics_sink):
    r = row("n-1", event_time=None, source="", type="", payload="{}")
    analytics_sink.write([r])
    assert analytics_sink.latest(1) == [r]


def test_writing_nothing_is_a_no_op(analytics_sink):
    analytics_sink.write([])
    assert analytics_sink.count() == 0
    assert analytics_sink.latest(5) == []


def test_an_unreachable_sink_raises_unavailable(down_analytics_sink):
    with pytest.raises(Unavailable):
        sink = down_analytics_sink()
        sink.start()
        sink.write([row("u")])
    with pytest.raises(Unavailable):
        down_analytics_sink().check()
