"""Segment's Python SDK against wotr on the local profile: every store gets the events.

The API (`wotr serve --api-only`) and the consumer (`wotr consume`) run as processes on
the real services (Kafka, the S3 server, PostgreSQL, the ClickHouse engine), as in
test_pipeline.py. `segment-analytics-python`, its host pointed at the API, sends every
call, a retry of one messageId and a batch with one invalid message; each valid message
is then one metadata row (published), one archived event whose bytes match the row's
checksum, and one ClickHouse row.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from segment.analytics.client import Client

from wotr_adapters.minio import minio_client
from wotr_domain.codec import decode_event

from pipeline_harness import Pipeline, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pipeline(tmp_path, s3_connection, kafka_connection, postgres_connection):
    p = Pipeline(tmp_path, s3_connection, kafka_connection, postgres_connection)
    yield p
    p.stop_all()


def sdk(host: str, errors: list, **options) -> Client:
    options = {"timeout": 10, "max_retries": 1, "max_total_backoff_duration": 10, "upload_interval": 0.05} | options
    return Client("wk-it", host=host, on_error=lambda e, batch: errors.append((e, batch)), **options)


def metadata_rows(p: Pipeline, ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(p.postgres.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT id, type, source, status, object_key, line, checksum FROM "{p.name}".event_metadata '
            "WHERE id = ANY(%s)", (ids,)).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_the_python_sdk_sends_to_wotr_and_every_store_has_the_events(pipeline):
    pipeline.start("serve")
    pipeline.start("consume")
    errors: list = []
    client = sdk(pipeline.url, errors, gzip=True)
    when = datetime.now(UTC) - timedelta(minutes=5)
    client.track("u-1", "Order Completed", {"revenue": 39.5}, timestamp=when, message_id="it-track")
    client.identify("u-1", {"plan": "pro"}, message_id="it-identify")
    client.page("u-1", name="Pricing", message_id="it-page")
    client.screen("u-1", name="Checkout", message_id="it-screen")
    client.group("u-1", "acme", {"employees": 120}, message_id="it-group")
    client.alias("a-7f3e", "u-1", message_id="alias #1 (no wotr id)")
    client.flush()
    client.track("u-1", "Order Completed", {"revenue": 39.5}, timestamp=when, message_id="it-track")  # a retry
    client.flush()
    client.join()
    mixed = sdk(pipeline.url, errors, upload_size=3, upload_interval=1)  # one request of three messages
    mixed.track("u-2", "Viewed", message_id="it-b1")
    mixed.track("u-2", "Too Old", message_id="it-b2", timestamp=datetime(1800, 1, 1, tzinfo=UTC))
    mixed.identify("u-2", {"plan": "free"}, message_id="it-b3")
    mixed.flush()
    mixed.join()
    assert errors == []  # every upload answered 200

    alias_id = "seg-" + hashlib.sha256(b"alias #1 (no wotr id)").hexdigest()
    types = {"it-track": "track:Order Completed", "it-identify": "identify", "it-page": "page",
             "it-screen": "screen", "it-group": "group", alias_id: "alias", "it-b1": "track:Viewed",
             "it-b3": "identify"}
    ids = [*types, "it-b2"]

    def published() -> dict[str, tuple] | None:
        found = metadata_rows(pipeline, ids)
        return found if all(i in found and found[i][2] == "published" for i in types) else None

    rows = wait_until(published, 60, "every event published")
    assert set(rows) == set(types)  # one row each; the retry is not a second, the invalid one is none
    assert {i: (row[0], row[1]) for i, row in rows.items()} == {i: (t, "segment") for i, t in types.items()}

    s3 = minio_client(pipeline.s3)
    for event_id, row in rows.items():
        raw = _raw(s3, pipeline, row)
        assert hashlib.sha256(raw).hexdigest() == row[5]  # the bytes the row's checksum names
        event = decode_event(raw)
        assert event.id == event_id and event.payload["context"]["library"]["name"] == "analytics-python"
    track = decode_event(_raw(s3, pipeline, rows["it-track"]))
    assert track.payload["properties"] == {"revenue": 39.5} and abs(track.timestamp - when) < timedelta(seconds=10)

    pipeline.wait_loaded(len(types))
    pipeline.stop("consume")
    loaded = pipeline.clickhouse(
        "SELECT id, type, source, payload FROM wotr.ingested_data FINAL ORDER BY id")
    assert {row[0]: (row[1], row[2]) for row in loaded} == {i: (t, "segment") for i, t in types.items()}
    assert json.loads(next(r[3] for r in loaded if r[0] == alias_id))["previousId"] == "a-7f3e"


def _raw(s3, p: Pipeline, row: tuple) -> bytes:
    data = s3.get_object(p.name, row[3]).read()
    return data if row[4] is None else data.split(b"\n")[row[4]]
