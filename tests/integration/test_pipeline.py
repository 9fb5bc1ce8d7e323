"""The whole pipeline on the real services, as separate processes, through failures.

API (`wotr serve --api-only`), consumer (`wotr consume`) and relay (`wotr relay`) run on
the local profile against the native stack's Kafka, S3 server and PostgreSQL, and the
ClickHouse engine. Each test gets its own topic, bucket and schema.
"""

from __future__ import annotations

import signal

import httpx
import psycopg
import pytest
from confluent_kafka import Producer

from wotr_adapters.kafka import KafkaEventBus
from wotr_adapters.minio import minio_client
from wotr_domain.codec import decode_event
from wotr_testing.stack import Stack

from pipeline_harness import Pipeline, wait_until

SEED_QUERY = "SELECT * FROM wotr.ingested_data ORDER BY created_at DESC LIMIT 10"


@pytest.fixture
def pipeline(tmp_path, s3_connection, kafka_connection, postgres_connection):
    p = Pipeline(tmp_path, s3_connection, kafka_connection, postgres_connection)
    yield p
    p.stop_all()


@pytest.fixture
def stack(kafka_connection, s3_connection, postgres_connection):
    """The native stack, for tests that stop a service; always restarts what was stopped."""
    stack = Stack()
    for name in ("kafka", "s3", "postgres"):
        if not stack.is_healthy(name):
            pytest.fail(f"failure tests stop and restart the native stack's {name}; it is not running")
    yield stack
    stack.up(["kafka", "s3", "postgres"])


def metadata(p: Pipeline, event_id: str) -> tuple | None:
    with psycopg.connect(p.postgres.conninfo, autocommit=True) as conn:
        return conn.execute(
            f'SELECT status, object_key, published_at FROM "{p.name}".event_metadata WHERE id = %s', (event_id,)
        ).fetchone()


def status_counts(p: Pipeline) -> dict[str, int]:
    with psycopg.connect(p.postgres.conninfo, autocommit=True) as conn:
        return dict(conn.execute(f'SELECT status, count(*) FROM "{p.name}".event_metadata GROUP BY status').fetchall())


def raw_keys(p: Pipeline) -> list[str]:
    client = minio_client(p.s3)
    return sorted(o.object_name for o in client.list_objects(p.name, prefix="raw/", recursive=True))


def archived_event_ids(p: Pipeline) -> set[str]:
    """Ids of the events in the raw archive: single-event objects and NDJSON batch lines."""
    client = minio_client(p.s3)
    ids = set()
    for key in raw_keys(p):
        data = client.get_object(p.name, key).read()
        ids |= {decode_event(line).id for line in data.split(b"\n") if line}
    return ids


def ingest(p: Pipeline, n: int, start: int = 0) -> list[str]:
    ids = []
    with httpx.Client(base_url=p.url, timeout=30) as client:
        for i in range(start, start + n):
            r = client.post("/ingest", json={"payload": {"n": i}, "source": "it", "type": "test"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


def test_the_seed_trace_end_to_end(pipeline):
    pipeline.start("serve")
    pipeline.start("consume")
    pipeline.start("relay")
    r = httpx.post(f"{pipeline.url}/ingest", json={"payload": {"example": "hello"}})
    assert r.status_code == 202
    event_id, key = r.json()["id"], r.json()["object_key"]
    assert httpx.get(f"{pipeline.url}/health").status_code == 200
    ready = httpx.get(f"{pipeline.url}/ready")
    assert ready.status_code == 200, ready.text
    assert key.startswith("raw/dt=") and raw_keys(pipeline) == [key]
    # The 202 comes once the object and the row are durable; the publish follows it.
    wait_until(lambda: metadata(pipeline, event_id)[0] == "published", 30, "the event published")
    bus = KafkaEventBus(pipeline.kafka.bootstrap, pipeline.name)
    on_topic = bus.messages(limit=10, timeout=10)
    assert [m.key for m in on_topic] == [event_id]
    pipeline.wait_loaded(1)
    # Queryable while the consumer runs: through the API, and with a ClickHouse client
    # against the consumer's read-only SQL endpoint (the seed's query as written).
    latest = httpx.get(f"{pipeline.url}/analytics/latest", params={"limit": 5}, timeout=30)
    assert latest.status_code == 200 and [r["id"] for r in latest.json()] == [event_id]
    import clickhouse_connect

    live = clickhouse_connect.get_client(host="127.0.0.1", port=pipeline.sql_port)
    assert [r[0] for r in live.query(SEED_QUERY).result_rows] == [event_id]
    with pytest.raises(Exception, match="read-only"):
        live.command("DROP TABLE wotr.ingested_data")
    pipeline.stop("consume")
    down = httpx.get(f"{pipeline.url}/analytics/latest", timeout=30)
    assert down.status_code == 503 and httpx.get(f"{pipeline.url}/ready").status_code == 200
    rows = pipeline.clickhouse(SEED_QUERY)
    assert [row[0] for row in rows] == [event_id]
    assert '"example":"hello"' in rows[0][5]
    # The integrity rules on the real stores: what PostgreSQL cannot hold is 422 at the
    # edge (not 503 forever); same id: 200 with the first receipt, or 409 for other content.
    bad = httpx.post(f"{pipeline.url}/ingest", json={"payload": {}, "source": "we\u0000b"})
    assert bad.status_code == 422 and bad.json()["field"] == "source"
    first = httpx.post(f"{pipeline.url}/ingest", json={"id": "it-order-1", "payload": {"v": 1}})
    again = httpx.post(f"{pipeline.url}/ingest", json={"id": "it-order-1", "payload": {"v": 1}})
    other = httpx.post(f"{pipeline.url}/ingest", json={"id": "it-order-1", "payload": {"v": 2}})
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert again.json()["object_key"] == first.json()["object_key"] and "it-order-1" in other.json()["detail"]
    assert status_counts(pipeline) == {"published": 2}
    assert len(raw_keys(pipeline)) == 2


def test_kafka_down_events_are_accepted_and_arrive_after_it_returns(pipeline, stack):
    pipeline.start("serve")
    pipeline.start("relay")
    before = ingest(pipeline, 5)
    stack.stop("kafka")
    try:
        during = ingest(pipeline, 20, start=5)  # 202: object and metadata are durable
        assert status_counts(pipeline).get("stored", 0) == 20
        assert len(raw_keys(pipeline)) == 25
    finally:
        stack.start("kafka")
    pipeline.start("consume")
    wait_until(lambda: status_counts(pipeline) == {"published": 25}, 120, "the relay to publish every event")
    pipeline.wait_loaded(25)
    pipeline.stop("consume")
    loaded = {row[0] for row in pipeline.clickhouse("SELECT id FROM wotr.ingested_data FINAL")}
    assert loaded == set(before) | set(during)


@pytest.mark.parametrize("service", ["s3", "postgres"])
def test_object_store_or_metadata_down_answers_503_and_leaves_nothing(pipeline, stack, service):
    pipeline.start("serve")
    kept = ingest(pipeline, 2)
    # Their publish follows the 202s: let it finish before the outage (no relay runs here).
    wait_until(lambda: status_counts(pipeline) == {"published": 2}, 30, "the two events published")
    stack.stop(service)
    try:
        r = httpx.post(f"{pipeline.url}/ingest", json={"payload": {"lost": True}}, timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        assert r.json()["error"] == "unavailable"
        assert httpx.get(f"{pipeline.url}/ready", timeout=60).status_code == 503
    finally:
        stack.start(service)
    wait_until(lambda: httpx.get(f"{pipeline.url}/ready", timeout=60).status_code == 200, 60, "readiness after restart")
    assert status_counts(pipeline) == {"published": 2}
    assert raw_keys(pipeline) == sorted(metadata(pipeline, i)[1] for i in kept)
    again = ingest(pipeline, 1, start=100)
    wait_until(lambda: metadata(pipeline, again[0])[0] == "published", 30, "the new event published")


def test_consumer_killed_mid_batch_loads_every_event_exactly_once(pipeline):
    pipeline.extra_env["WOTR_CONSUMER_BATCH_SIZE"] = "20"  # many small batches: the kill lands mid-stream
    pipeline.start("serve")
    events = [{"payload": {"n": i}} for i in range(3000)]
    ids = []
    with httpx.Client(base_url=pipeline.url, timeout=60) as client:
        for start in range(0, len(events), 500):
            r = client.post("/ingest/batch", json=events[start : start + 500])
            assert r.status_code == 202, r.text
            ids += [x["id"] for x in r.json()["results"]]
    pipeline.start("consume")
    wait_until(lambda: pipeline.consumer_metric("wotr_sink_rows_total") >= 1, 120, "the first rows", interval=0.02)
    assert pipeline.stop("consume", signal.SIGKILL) == -signal.SIGKILL
    pipeline.start("consume")
    pipeline.wait_caught_up()
    pipeline.stop("consume")
    (distinct, final_rows), = pipeline.clickhouse(
        "SELECT uniqExact(id), (SELECT count() FROM wotr.ingested_data FINAL) FROM wotr.ingested_data")
    assert (distinct, final_rows) == (3000, 3000)
    assert {r[0] for r in pipeline.clickhouse("SELECT id FROM wotr.ingested_data FINAL")} == set(ids)


def test_a_poison_message_goes_to_the_dead_letter_topic_and_the_rest_load(pipeline):
    pipeline.start("serve")
    first = ingest(pipeline, 3)
    producer = Producer({"bootstrap.servers": pipeline.kafka.bootstrap})
    producer.produce(pipeline.name, key=b"poison", value=b"\x00not an event")
    assert producer.flush(10) == 0
    later = ingest(pipeline, 3, start=3)
    pipeline.start("consume")
    pipeline.wait_loaded(6)
    bus = KafkaEventBus(pipeline.kafka.bootstrap, pipeline.name)
    letters = wait_until(lambda: bus.dead_letters(limit=10), 60, "the dead letter")
    assert [(d.key, d.value) for d in letters] == [("poison", b"\x00not an event")]
    assert letters[0].headers["dlq-reason"].startswith("undecodable event")
    pipeline.stop("consume")
    loaded = {row[0] for row in pipeline.clickhouse("SELECT id FROM wotr.ingested_data FINAL")}
    assert loaded == set(first) | set(later)


def test_ten_thousand_events_reach_every_store_exactly_once(pipeline):
    """Accepted = stored = recorded = published = loaded, through single and batch ingest."""
    pipeline.start("serve")
    pipeline.start("consume")
    pipeline.start("relay")
    accepted = set()
    with httpx.Client(base_url=pipeline.url, timeout=60) as client:
        for i in range(1000):
            r = client.post("/ingest", json={"payload": {"single": i}})
            assert r.status_code == 202
            accepted.add(r.json()["id"])
        for start in range(0, 9000, 1000):
            r = client.post("/ingest/batch", json=[{"payload": {"batch": start + i}} for i in range(1000)])
            assert r.status_code == 202
            accepted |= {x["id"] for x in r.json()["results"]}
    wait_until(lambda: status_counts(pipeline) == {"published": 10_000}, 120, "every event published")
    pipeline.wait_caught_up()
    pipeline.stop("consume")
    stored = len(archived_event_ids(pipeline) & accepted)
    counts = status_counts(pipeline)
    on_topic = len(KafkaEventBus(pipeline.kafka.bootstrap, pipeline.name).messages(limit=20_000, timeout=60))
    (loaded,), = pipeline.clickhouse("SELECT count() FROM wotr.ingested_data FINAL")
    figures = {"accepted": len(accepted), "stored": stored, "recorded": sum(counts.values()),
               "published": counts["published"], "on_topic": on_topic, "loaded": loaded}
    print(f"\npipeline counts: {figures}")
    assert set(figures.values()) == {10_000}, figures


def test_replay_rebuilds_a_lost_analytics_table_row_for_row(pipeline):
    """Drop the ClickHouse table, replay the archive, compare with the metadata row for row;
    a second replay changes nothing."""
    import subprocess
    from datetime import UTC, datetime, timedelta

    from pipeline_harness import WOTR

    pipeline.start("serve")
    pipeline.start("consume")
    ids = ingest(pipeline, 30)
    with httpx.Client(base_url=pipeline.url, timeout=60) as client:
        r = client.post("/ingest/batch", json=[{"payload": {"b": i}, "source": "batch"} for i in range(200)])
        assert r.status_code == 202
        ids += [x["id"] for x in r.json()["results"]]
    pipeline.wait_loaded(230)
    pipeline.stop("consume")
    pipeline.clickhouse("DROP TABLE wotr.ingested_data")
    pipeline.start("consume")  # recreates the empty table

    today = datetime.now(UTC).date()
    replay = [*WOTR, "replay", "--since", str(today - timedelta(days=1)), "--until", str(today)]
    for attempt in range(2):
        out = subprocess.run(replay, env=pipeline.env("replay"), cwd=pipeline.workdir, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "230 published" in out.stdout and "0 checksum mismatches, 0 missing" in out.stdout, out.stdout
        pipeline.wait_loaded(230 * (attempt + 1))
    pipeline.wait_caught_up()
    pipeline.stop("consume")
    rows = pipeline.clickhouse("SELECT id, object_key FROM wotr.ingested_data FINAL ORDER BY id")
    with psycopg.connect(pipeline.postgres.conninfo, autocommit=True) as conn:
        meta = conn.execute(f'SELECT id, object_key FROM "{pipeline.name}".event_metadata ORDER BY id COLLATE "C"').fetchall()
    assert [tuple(r) for r in rows] == [tuple(m) for m in meta]
    assert sorted(r[0] for r in rows) == sorted(ids)
