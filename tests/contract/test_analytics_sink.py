"""Contract of the AnalyticsSink port: batch writes, idempotent by event id; run against
every sink adapter (in-memory, the in-process ClickHouse engine, a server when configured)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from wotr_adapters.memory import InMemoryEventBus
from wotr_domain.codec import encode
from wotr_domain.errors import Refused, Unavailable
from wotr_domain.models import AnalyticsRow, BusMessage, Event
from wotr_domain.services import AnalyticsLoader
from wotr_domain.services.loader import AnalyticsColumns

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


def columns_of(rows: list[AnalyticsRow]) -> AnalyticsColumns:
    """The rows as the loader hands them over: one column per field."""
    return AnalyticsColumns(tuple([getattr(r, f) for r in rows] for f in AnalyticsRow.__struct_fields__))


def test_rows_handed_over_as_columns_are_written_like_rows(analytics_sink):
    rows = [row("c1", 1), row("c2", 2, event_time=None, source="", type=""), row("c3", 3)]
    analytics_sink.write(columns_of(rows))
    analytics_sink.write(columns_of(rows)[1:])  # a slice, as when a refused batch is split
    assert analytics_sink.latest(10) == rows[::-1]
    assert analytics_sink.count() == 3


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


# -- refusals: what the ClickHouse sink (engine or server) will never take -------------------
#
# The engine stores whatever an AnalyticsRow holds in its columns except what these tests
# show: a datetime outside DateTime64's range (the engine would store it, but reading the
# row back fails: the sink refuses it first), a string with a lone surrogate (the driver
# cannot encode it as UTF-8), and a batch spanning more than 100 months (partitions) in one
# INSERT. The first is reachable from the bus: an event whose timestamp is
# 0001-01-01T00:00:00+05:00 decodes (it is 0000-12-31T19:00Z).


@pytest.fixture
def clickhouse_sink(clickhouse_client):
    from wotr_adapters.clickhouse import ClickHouseAnalyticsSink

    sink = ClickHouseAnalyticsSink(clickhouse_client, database=f"wotr_refusals_{uuid.uuid4().hex[:12]}")
    sink.start()
    yield sink
    sink.close()


BEFORE_YEAR_ONE_UTC = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))


@pytest.mark.parametrize(
    "changes",
    [
        {"event_time": BEFORE_YEAR_ONE_UTC},
        {"event_time": datetime(1899, 12, 31, 23, 59, 59, tzinfo=UTC)},
        {"created_at": datetime(2300, 1, 1, tzinfo=UTC)},
        {"payload": '{"text":"\ud800"}'},
        {"source": "\udfff"},
    ],
    ids=["event-time-before-year-1-utc", "event-time-before-1900", "created-at-after-2299", "payload-lone-surrogate",
         "source-lone-surrogate"],
)
def test_clickhouse_refuses_a_row_it_cannot_hold_and_writes_nothing_of_the_batch(clickhouse_sink, changes):
    batch = [row("good-1", 1), row("bad", 2, **changes), row("good-2", 3)]
    with pytest.raises(Refused) as refused:
        clickhouse_sink.write(batch)
    assert refused.value.dependency == "clickhouse" and refused.value.detail
    assert clickhouse_sink.count() == 0
    clickhouse_sink.check()  # refusing data is not being down


def test_clickhouse_refuses_a_row_it_cannot_hold_among_columns_too_and_names_it(clickhouse_sink):
    batch = [row("good-1", 1), row("bad", 2, event_time=BEFORE_YEAR_ONE_UTC), row("good-2", 3)]
    with pytest.raises(Refused) as as_rows:
        clickhouse_sink.write(batch)
    with pytest.raises(Refused) as as_columns:
        clickhouse_sink.write(columns_of(batch))
    assert str(as_columns.value) == str(as_rows.value) and "'bad'" in str(as_columns.value)
    assert clickhouse_sink.count() == 0


def test_clickhouse_reads_naive_datetimes_as_utc(clickhouse_sink):
    naive = T0.replace(tzinfo=None)
    clickhouse_sink.write([row("naive-row", created_at=naive, event_time=naive)])
    clickhouse_sink.write(columns_of([row("naive-column", 1, created_at=naive + timedelta(seconds=1), event_time=None)]))
    latest = clickhouse_sink.latest(10)
    assert [(r.id, r.created_at, r.event_time) for r in latest] == [
        ("naive-column", T0 + timedelta(seconds=1), None), ("naive-row", T0, T0)]


def test_clickhouse_writes_into_a_table_made_again_after_a_failed_insert(clickhouse_sink, clickhouse_client):
    clickhouse_sink.write([row("before")])
    clickhouse_client.command(f"DROP TABLE {clickhouse_sink._table}")
    with pytest.raises(Unavailable):
        clickhouse_sink.write([row("while-missing")])
    clickhouse_sink.start()
    clickhouse_sink.write([row("after")])
    assert [r.id for r in clickhouse_sink.latest(10)] == ["after"]


def test_clickhouse_takes_the_edges_of_datetime64(clickhouse_sink):
    edges = [
        row("first", event_time=datetime(1900, 1, 1, tzinfo=UTC), created_at=datetime(1900, 1, 1, tzinfo=UTC)),
        row("last", event_time=datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            created_at=datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ]
    clickhouse_sink.write(edges)
    assert clickhouse_sink.latest(10) == [edges[1], edges[0]]


def test_clickhouse_refuses_one_insert_over_too_many_partitions(clickhouse_sink):
    months = [row(f"m{i}", created_at=datetime(2000 + i // 12, i % 12 + 1, 1, tzinfo=UTC)) for i in range(101)]
    with pytest.raises(Refused, match="partitions"):
        clickhouse_sink.write(months)
    assert clickhouse_sink.count() == 0


def test_a_missing_table_is_unavailable_not_refused(clickhouse_sink, clickhouse_client):
    clickhouse_client.command(f"DROP TABLE {clickhouse_sink._table}")
    with pytest.raises(Unavailable) as write_error:
        clickhouse_sink.write([row("a")])
    assert not isinstance(write_error.value, Refused)
    with pytest.raises(Unavailable, match="does not exist"):
        clickhouse_sink.check()


def _event_message(event_id: str, *, received_at: datetime = T0, timestamp: datetime | None = None) -> BusMessage:
    event = Event(id=event_id, received_at=received_at, payload={"id": event_id}, source="web", type="click", timestamp=timestamp)
    return BusMessage(key=event_id, value=encode(event), headers={"object-key": f"raw/{event_id}.json"})


def test_the_loader_dead_letters_the_row_clickhouse_refuses_and_loads_the_rest(clickhouse_sink):
    bus = InMemoryEventBus()
    good = [f"good-{i}" for i in range(7)]
    messages = [_event_message(i, timestamp=T0) for i in good]
    messages.insert(3, _event_message("poison", timestamp=BEFORE_YEAR_ONE_UTC))
    bus.publish(messages)
    outcome = AnalyticsLoader(bus.subscribe("g"), clickhouse_sink, retry_delay=0).run_once(timeout=0)
    assert (outcome.received, outcome.loaded, outcome.dead_lettered, outcome.refused) == (8, 7, 1, 1)
    assert sorted(r.id for r in clickhouse_sink.latest(100)) == sorted(good)  # and the table still reads
    (letter,) = bus.dead_letters()
    assert letter.key == "poison" and letter.value == messages[3].value
    reason = letter.headers["dlq-reason"]
    assert reason.startswith("refused by the analytics sink: clickhouse refused the data") and "DateTime64" in reason
    assert bus.committed["g"] == 8


def test_the_loader_splits_a_batch_clickhouse_refuses_whole_and_loads_all_of_it(clickhouse_sink):
    bus = InMemoryEventBus()
    ids = [f"month-{i}" for i in range(150)]
    bus.publish([_event_message(i, received_at=datetime(2010 + n // 12, n % 12 + 1, 1, tzinfo=UTC)) for n, i in enumerate(ids)])
    outcome = AnalyticsLoader(bus.subscribe("g"), clickhouse_sink, retry_delay=0).run_once(timeout=0)
    assert (outcome.loaded, outcome.dead_lettered) == (150, 0)
    assert clickhouse_sink.count() == 150 and bus.dead_letters() == [] and bus.committed["g"] == 150



def _raising(error: BaseException):
    def call(*_args, **_kwargs):
        raise error

    return call


# Server errors the engine cannot produce here, classified as the sink classifies them
# (each entry builds the driver's exception from clickhouse_connect's exceptions module).
_WRITE_ERRORS = {
    "transport": (lambda ch: ch.OperationalError("Error HTTPConnectionPool: Max retries exceeded"), Unavailable),
    "type-mismatch": (lambda ch: ch.DatabaseError("Code: 53. DB::Exception: Type mismatch", code=53), Refused),
    "out-of-range": (lambda ch: ch.DatabaseError("Code: 321. DB::Exception: Value out of range", code=321), Refused),
    "parse-no-code-attribute": (
        lambda ch: ch.DatabaseError("Code: 27. DB::Exception: Cannot parse input (CANNOT_PARSE_INPUT_ASSERTION_FAILED)"),
        Refused),
    "too-many-partitions": (
        lambda ch: ch.DatabaseError("Code: 252. DB::Exception: Too many partitions for single INSERT block", code=252),
        Refused),
    "too-many-parts": (
        lambda ch: ch.DatabaseError("Code: 252. DB::Exception: Too many parts (600). Merges are processing significantly"
                                    " slower than inserts", code=252),
        Unavailable),
    "memory-limit": (lambda ch: ch.DatabaseError("Code: 241. DB::Exception: Memory limit exceeded", code=241), Unavailable),
    "unknown-table": (lambda ch: ch.DatabaseError("Code: 60. DB::Exception: Table does not exist", code=60), Unavailable),
    "access-denied": (lambda ch: ch.DatabaseError("Code: 497. DB::Exception: Not enough privileges", code=497), Unavailable),
    "disk-full": (lambda ch: ch.DatabaseError("Code: 243. DB::Exception: Not enough space", code=243), Unavailable),
    "driver-data-error": (lambda ch: ch.DataError("Tuple expects a sequence with 2 elements at row 1"), Refused),
    "client-closed": (lambda ch: ch.ProgrammingError("The client has been closed"), Unavailable),
    "lone-surrogate": (lambda ch: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), Refused),
}


@pytest.mark.parametrize("case", sorted(_WRITE_ERRORS))
def test_clickhouse_write_errors_are_classified(case):
    from clickhouse_connect.driver import exceptions

    from wotr_adapters.clickhouse import ClickHouseAnalyticsSink

    build, expected = _WRITE_ERRORS[case]
    raised = build(exceptions)
    sink = ClickHouseAnalyticsSink(client=None)
    with pytest.raises(expected) as translated:
        sink._run("insert", _raising(raised))
    assert type(translated.value) is expected and translated.value.__cause__ is raised
    # Reads and checks are never "refused": the data is not theirs.
    with pytest.raises(Unavailable if isinstance(raised, exceptions.ClickHouseError) else UnicodeEncodeError):
        sink._run("query", _raising(raised))


@pytest.mark.parametrize("error", [TypeError("unsupported operand"), ValueError("bad isoformat"), KeyError("x")])
def test_clickhouse_lets_programming_errors_through_unchanged(error):
    from wotr_adapters.clickhouse import ClickHouseAnalyticsSink

    sink = ClickHouseAnalyticsSink(client=None)
    for what in ("insert", "query", "health check"):
        with pytest.raises(type(error)) as raised:
            sink._run(what, _raising(error))
        assert raised.value is error
