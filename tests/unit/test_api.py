"""The HTTP API through Litestar's test client, on the memory profile.

Every bad-input case asserts the status, the error naming the problem, and that nothing
was written anywhere.
"""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from wotr_apps.container import build_container
from wotr_apps.settings import Settings
from dependency_injector import providers

from wotr_apps.workers import WorkerThread, run_consumer


@pytest.fixture
def container():
    return build_container(Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_MAX_BODY_BYTES": "2048", "WOTR_MAX_BATCH_EVENTS": "5"}), with_workers=False)


@pytest.fixture
def client(container):
    with TestClient(container.app()) as c:
        yield c


def nothing_written(container) -> bool:
    return (
        list(container.object_store().list()) == []
        and container.metadata_repo().count() == 0
        and container.event_bus().messages() == []
    )


def test_the_seed_body_is_accepted_with_id_and_object_key(client, container):
    r = client.post("/ingest", json={"payload": {"example": "hello"}})
    assert r.status_code == 202
    body = r.json()
    assert body["object_key"] == f"raw/dt={body['object_key'][7:17]}/{body['id']}.json"
    assert container.object_store().exists(body["object_key"])
    meta = client.get(f"/events/{body['id']}")
    assert meta.status_code == 200
    assert meta.json()["status"] == "published" and meta.json()["object_key"] == body["object_key"]


def test_a_retry_with_the_same_id_gets_the_first_receipt(client, container):
    first = client.post("/ingest", json={"id": "evt-1", "payload": {"n": 1}})
    again = client.post("/ingest", json={"id": "evt-1", "payload": {"n": 1}})
    assert first.status_code == 202 and again.status_code == 200
    # The same receipt, marked duplicate, with the event's status now (the publish follows
    # the first answer: it may say `stored`, the retry `published`).
    now = client.get("/events/evt-1").json()["status"]
    assert again.json() == first.json() | {"duplicate": True, "status": now}
    assert container.metadata_repo().count() == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "error", "field"),
    [
        (b'{"payload": {"a": 1}', {"content-type": "application/json"}, 400, "malformed_json", None),
        (b"", {"content-type": "application/json"}, 400, "malformed_json", None),
        (b'{"payload": [1, 2]}', {"content-type": "application/json"}, 422, "invalid_event", "payload"),
        (b'{"data": {}}', {"content-type": "application/json"}, 422, "invalid_event", "data"),
        (b"{}", {"content-type": "application/json"}, 422, "invalid_event", "payload"),
        (b'{"payload": {}, "timestamp": "yesterday"}', {"content-type": "application/json"}, 422, "invalid_event", "timestamp"),
        (b'{"payload": {}, "id": "no spaces"}', {"content-type": "application/json"}, 400, "invalid_id", "id"),
        (b'{"payload": {}, "id": 7}', {"content-type": "application/json"}, 422, "invalid_event", "id"),
        (b'{"payload": {}}', {"content-type": "text/plain"}, 415, "unsupported_media_type", None),
        (b'{"payload": {}}', {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", None),
        (json.dumps({"payload": {"x": "y" * 3000}}).encode(), {"content-type": "application/json"}, 413, "payload_too_large", None),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem_and_writes_nothing(client, container, body, headers, status, error, field):
    r = client.post("/ingest", content=body, headers=headers)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["error"] == error
    assert payload["detail"]
    assert payload.get("field") == field
    assert nothing_written(container)


def test_batch_json_array_reports_each_event(client, container):
    r = client.post("/ingest/batch", json=[{"payload": {"n": 1}}, {"payload": "oops"}, {"id": "b-1", "payload": {}}])
    assert r.status_code == 207
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][1]["field"] == "payload" and body["results"][1]["index"] == 1
    assert body["results"][2]["id"] == "b-1"
    assert container.metadata_repo().count() == 2


def test_batch_ndjson_is_accepted(client, container):
    lines = b"\n".join(json.dumps({"payload": {"n": i}}).encode() for i in range(3)) + b"\n"
    r = client.post("/ingest/batch", content=lines, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 202
    assert r.json()["accepted"] == 3
    assert container.metadata_repo().count() == 3


def test_batch_where_every_item_is_bad_is_422_and_writes_nothing(client, container):
    r = client.post("/ingest/batch", content=b"{bad\n[1]\n", headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 422
    assert r.json()["rejected"] == 2
    assert nothing_written(container)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"payload": {}}', 422, "invalid_event"),  # an object, not an array
        (b"[", 400, "malformed_json"),
        (b"[]", 422, "invalid_event"),
        (json.dumps([{"payload": {}}] * 6).encode(), 413, "payload_too_large"),
    ],
)
def test_batch_bodies_that_are_not_a_batch_are_refused(client, container, body, status, error):
    r = client.post("/ingest/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["error"] == error
    assert nothing_written(container)


def test_unknown_event_is_404(client):
    r = client.get("/events/does-not-exist")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_a_store_outage_answers_503_with_retry_after_and_writes_nothing(client, container):
    container.metadata_repo().outage = True
    r = client.post("/ingest", json={"payload": {"n": 1}})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json()["error"] == "unavailable" and "metadata repo" in r.json()["detail"]
    container.metadata_repo().outage = False
    assert nothing_written(container)


def test_health_and_readiness(client, container):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"object_store": "ok", "metadata_repo": "ok", "event_bus": "ok", "analytics_sink": "ok"}
    container.event_bus().outage = True
    down = client.get("/ready")
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert down.json()["checks"]["event_bus"].startswith("down")


def test_latest_analytics_rows_after_the_consumer_ran(container):
    worker = WorkerThread("consumer", lambda stop: run_consumer(container.analytics_loader(), stop, batch_size=100, batch_seconds=0.05))
    container.serve_workers.override(providers.Object([worker]))
    with TestClient(container.app()) as client:
        ids = [client.post("/ingest", json={"payload": {"n": i}}).json()["id"] for i in range(3)]
        import time

        deadline = time.monotonic() + 5
        rows = []
        while len(rows) < 3 and time.monotonic() < deadline:
            rows = client.get("/analytics/latest", params={"limit": 10}).json()
            time.sleep(0.05)
        assert [r["id"] for r in rows] == list(reversed(ids))
        assert client.get("/analytics/latest", params={"limit": 0}).status_code == 400


def test_openapi_schema_lists_the_endpoints(client):
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert {"/ingest", "/ingest/batch", "/events/{event_id}", "/analytics/latest", "/health", "/ready"} <= set(paths)


def test_metrics_count_outcomes_and_http_requests():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    with TestClient(container.app()) as client:
        client.post("/ingest", json={"payload": {"n": 1}})
        client.post("/ingest", json={"id": "same", "payload": {}})
        client.post("/ingest", json={"id": "same", "payload": {}})
        client.post("/ingest", json={"payload": "not an object"})
        text = client.get("/metrics").text
    samples = {
        line.split("{")[0] + "|" + line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wotr_ingest_total{")
    }
    assert samples == {"wotr_ingest_total|accepted": 2.0, "wotr_ingest_total|duplicate": 1.0, "wotr_ingest_total|rejected": 1.0}
    assert 'http_server_request_duration_seconds_count{' in text
    assert 'http_response_status_code="422"' in text and 'http_route="POST /ingest"' in text


def test_requests_in_flight_are_counted_while_they_run():
    """`http.server.active_requests`: a request being served counts 1 and 0 once answered."""
    import asyncio

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from wotr_apps.api.http_metrics import HttpMetrics

    reader = InMemoryMetricReader()
    metrics = HttpMetrics(MeterProvider(metric_readers=[reader]).get_meter("t"), lambda scope: "POST /ingest")

    def in_flight() -> dict[str, float]:
        data = reader.get_metrics_data()
        return {p.attributes["http.request.method"]: p.value
                for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                if m.name == "http.server.active_requests" for p in m.data.data_points}

    async def scenario():
        release = asyncio.Event()

        async def app(scope, receive, send):
            await release.wait()
            await send({"type": "http.response.start", "status": 202, "headers": []})

        async def send(message):
            pass

        served = asyncio.create_task(metrics(app)({"type": "http", "path": "/ingest", "method": "POST"}, None, send))
        await asyncio.sleep(0.01)
        during = in_flight()
        release.set()
        await served
        return during, in_flight()

    during, after = asyncio.run(scenario())
    assert during == {"POST": 1}
    assert after == {"POST": 0}
