"""The Segment-compatible tracking API: the mapping, the endpoints, and Segment's own
Python SDK (`segment-analytics-python`) sending to a real wotr API.

The mapping is tested as a pure function; the endpoints through Litestar's test client;
the SDK against uvicorn on 127.0.0.1 (an ephemeral port, memory profile), its host
pointed at wotr, with its HTTP timeout and retries bounded. Events are checked where they
land: the metadata row and the archived event.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient
from segment.analytics.client import Client
from segment.analytics.request import APIError
from segment.analytics.request import post as sdk_post

from serving import uvicorn_serving

from wotr_apps.api.segment import TRACKING_ROUTES, corrected_timestamp, event_id_for, tracking_batch, tracking_request
from wotr_apps.container import build_container
from wotr_apps.settings import Settings
from wotr_domain.codec import decode_event
from wotr_domain.errors import InvalidEvent, PayloadTooLarge
from wotr_domain.models import Event

pytestmark = pytest.mark.timeout(120)

RECEIVED = datetime(2026, 11, 26, 9, 15, 3, 500000, tzinfo=UTC)
ENV = {"WOTR_PROFILE": "memory", "WOTR_MAX_BODY_BYTES": "4096", "WOTR_MAX_BATCH_EVENTS": "20"}


# -- the mapping ----------------------------------------------------------------------------


def test_a_track_call_becomes_an_event_of_type_track_and_its_name():
    message = {"type": "track", "messageId": "m-1", "userId": "u-1", "event": "Order Completed",
               "properties": {"revenue": 39.5}, "timestamp": "2026-11-26T09:15:02.000Z",
               "sentAt": "2026-11-26T09:15:03.000Z", "writeKey": "secret"}
    request = tracking_request(message, received_at=RECEIVED, kind="track")
    assert (request.id, request.type, request.source) == ("m-1", "track:Order Completed", "segment")
    # timestamp + (receivedAt - sentAt): the device's clock was 0.5 s behind
    assert request.timestamp == datetime(2026, 11, 26, 9, 15, 2, 500000, tzinfo=UTC)
    assert request.payload == {k: v for k, v in message.items() if k != "writeKey"}  # the message, no credential


@pytest.mark.parametrize("kind", ["identify", "page", "screen", "group", "alias"])
def test_the_other_calls_become_events_of_their_type(kind):
    message = {"userId": "u-1", "anonymousId": "a-1", "groupId": "g-1", "previousId": "a-1", "messageId": f"m-{kind}"}
    request = tracking_request(message, received_at=RECEIVED, kind=kind)
    assert (request.type, request.id) == (kind, f"m-{kind}")
    assert request.payload["type"] == kind  # filled in from the endpoint


def test_the_clock_skew_rule():
    ts, sent = "2026-11-26T10:00:00+01:00", "2026-11-26T09:00:10Z"  # the device's clock is 10 s fast... and in +01:00
    assert corrected_timestamp(ts, sent, RECEIVED) == datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC) + (
        RECEIVED - datetime(2026, 11, 26, 9, 0, 10, tzinfo=UTC))
    assert corrected_timestamp(ts, None, RECEIVED) == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # no sentAt: as sent
    assert corrected_timestamp(None, sent, RECEIVED) == RECEIVED  # no timestamp: receivedAt
    assert corrected_timestamp("2026-11-26T09:00:00", None, RECEIVED).tzinfo is not None  # no offset: UTC


def test_a_message_id_that_is_no_wotr_id_gets_a_deterministic_one():
    assert event_id_for("9f2c1a7e-0d4b-4c39-9a57-3f1f7f0f2a11") == "9f2c1a7e-0d4b-4c39-9a57-3f1f7f0f2a11"
    odd = "order 12/3 ✓"
    assert event_id_for(odd) == "seg-" + hashlib.sha256(odd.encode()).hexdigest() == event_id_for(odd)
    assert event_id_for("x" * 129).startswith("seg-")  # too long for a wotr id
    assert event_id_for(None) is None  # wotr generates one


def test_a_batch_applies_its_context_integrations_and_sent_at_to_messages_without_their_own():
    body = json.dumps({
        "batch": [
            {"type": "identify", "userId": "u", "timestamp": "2026-11-26T09:15:00Z"},
            {"type": "track", "userId": "u", "event": "E", "context": {"ip": "own"}, "sentAt": "2026-11-26T09:15:03.5Z"},
        ],
        "context": {"library": {"name": "analytics-python"}}, "integrations": {"All": True},
        "sentAt": "2026-11-26T09:15:01.5Z", "writeKey": "secret",
    }).encode()
    first, second = tracking_batch(body, received_at=RECEIVED, max_events=10)
    assert first.payload["context"] == {"library": {"name": "analytics-python"}} and first.payload["integrations"]
    assert first.timestamp == datetime(2026, 11, 26, 9, 15, 2, tzinfo=UTC)  # 09:15:00 + (03.5 - 01.5)
    assert second.payload["context"] == {"ip": "own"} and second.timestamp == RECEIVED
    assert "writeKey" not in first.payload and "writeKey" not in second.payload


@pytest.mark.parametrize(
    ("message", "kind", "field"),
    [
        ({"userId": "u"}, "track", "event"),
        ({"userId": "u", "event": ""}, "track", "event"),
        ({"userId": "u", "event": "a\nb"}, "track", "event"),
        ({"userId": "u", "event": "e" * 251}, "track", "event"),
        ({"event": "E"}, "track", "anonymousId"),
        ({"userId": "", "event": "E"}, "track", "userId"),
        ({"userId": "u"}, "alias", "previousId"),
        ({"previousId": "a"}, "alias", "userId"),
        ({"userId": "u"}, "group", "groupId"),
        ({"userId": "u", "traits": [1]}, "identify", "traits"),
        ({"userId": "u", "name": 3}, "page", "name"),
        ({"userId": "u", "type": "page"}, "identify", "type"),
        ({"userId": "u", "timestamp": "yesterday"}, "identify", "timestamp"),
        ({"userId": "u", "sentAt": 17}, "identify", "sentAt"),
        ({"userId": "u", "messageId": 7}, "identify", "messageId"),
        ({"userId": "u", "type": "purchase"}, None, "type"),
    ],
)
def test_an_invalid_message_names_its_field(message, kind, field):
    with pytest.raises(InvalidEvent) as info:
        tracking_request(message, received_at=RECEIVED, kind=kind)
    assert info.value.field == field


def test_a_batch_that_is_not_one_is_refused_whole():
    for body, field in ((b'{"batch": {}}', "batch"), (b'{"batch": []}', "batch"), (b"[1]", None)):
        with pytest.raises(InvalidEvent) as info:
            tracking_batch(body, received_at=RECEIVED, max_events=10)
        assert info.value.field == field
    with pytest.raises(PayloadTooLarge):
        tracking_batch(json.dumps({"batch": [{}] * 11}).encode(), received_at=RECEIVED, max_events=10)


def test_the_tracking_routes_are_one_list_for_a_guard():
    paths = {path for handler in TRACKING_ROUTES for path in handler.paths}
    assert paths == {f"/v1/{n}" for n in ("track", "identify", "page", "screen", "group", "alias", "batch",
                                            "t", "i", "p", "s", "g", "a", "b")}


# -- the endpoints --------------------------------------------------------------------------


@pytest.fixture
def container():
    return build_container(Settings.from_env(ENV), with_workers=False)


@pytest.fixture
def client(container):
    with TestClient(container.app()) as c:
        yield c


def archived(container, event_id: str) -> Event:
    """The event as archived, found through its metadata row."""
    meta = container.metadata_repo().get(event_id)
    data = container.object_store().get(meta.object_key)
    return decode_event(data if meta.line is None else data.split(b"\n")[meta.line])


def nothing_written(container) -> bool:
    return container.metadata_repo().count() == 0 and list(container.object_store().list()) == []


def test_a_track_call_is_archived_with_the_message_as_payload(client, container):
    message = {"messageId": "m-1", "userId": "u-1", "event": "Signed Up", "properties": {"plan": "pro"}}
    r = client.post("/v1/track", json=message)
    assert r.status_code == 200 and r.json() == {"success": True, "id": "m-1", "duplicate": False}
    meta = container.metadata_repo().get("m-1")
    assert (meta.type, meta.source) == ("track:Signed Up", "segment")
    assert archived(container, "m-1").payload == message | {"type": "track"}


def test_analytics_js_short_paths_and_text_plain_bodies(client, container):
    message = {"type": "page", "messageId": "ajs-next-1", "anonymousId": "a-1", "name": "Home", "writeKey": "k"}
    r = client.post("/v1/p", content=json.dumps(message), headers={"content-type": "text/plain;charset=UTF-8"})
    assert r.status_code == 200, r.text
    assert archived(container, "ajs-next-1").payload == {k: v for k, v in message.items() if k != "writeKey"}


def test_a_gzip_body_is_decoded(client, container):
    body = gzip.compress(json.dumps({"batch": [{"type": "identify", "userId": "u", "messageId": "gz-1"}]}).encode())
    r = client.post("/v1/batch", content=body, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert container.metadata_repo().get("gz-1").type == "identify"


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/v1/track", b'{"userId": "u"}', {}, 400, "invalid_event"),
        ("/v1/track", b'{"userId": "u", "event": "E"', {}, 400, "malformed_json"),
        ("/v1/identify", b'[{"userId": "u"}]', {}, 400, "invalid_event"),
        ("/v1/identify", b'{"userId": "u", "timestamp": "1800-01-01T00:00:00Z"}', {}, 400, "invalid_event"),
        ("/v1/track", b'{"userId": "u", "event": "E"}', {"content-type": "text/csv"}, 415, "unsupported_media_type"),
        ("/v1/track", b'{"userId": "u", "event": "E"}', {"content-encoding": "br"}, 415, "unsupported_content_encoding"),
        ("/v1/track", b'{"userId": "u", "event": "E"}', {"content-encoding": "gzip"}, 400, "corrupt_body"),
        ("/v1/track", json.dumps({"userId": "u", "event": "E", "properties": {"x": "y" * 5000}}).encode(), {}, 413,
         "payload_too_large"),
        ("/v1/batch", b'{"batch": []}', {}, 400, "invalid_event"),
        ("/v1/batch", b'{"batch": [{"type": "track", "userId": "u"}, {"type": "alias", "userId": "u"}]}', {}, 400,
         "invalid_event"),
        ("/v1/batch", json.dumps({"batch": [{}] * 21}).encode(), {}, 413, "payload_too_large"),
    ],
)
def test_what_cannot_be_taken_is_refused_and_writes_nothing(client, container, path, body, headers, status, error):
    r = client.post(path, content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["detail"]
    assert nothing_written(container)


def test_a_batch_where_no_message_is_valid_names_the_first_problem(client):
    r = client.post("/v1/batch", json={"batch": [{"type": "track", "userId": "u"}, {"type": "alias", "userId": "u"}]})
    assert r.json()["field"] == "batch[0].event" and "batch[1]: alias needs previousId" in r.json()["detail"]


def test_a_browser_origin_the_settings_do_not_allow_is_refused_before_anything_is_read(container):
    message = json.dumps({"userId": "u", "event": "E", "messageId": "o-1"})
    with TestClient(container.app()) as client:  # CORS off: no browser origin is allowed
        r = client.post("/v1/t", content=message, headers={"content-type": "text/plain", "origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"] == "origin_not_allowed"
        assert nothing_written(container)
        same = client.post("/v1/t", content=message, headers={"content-type": "text/plain",
                                                               "origin": "http://testserver.local"})
        assert same.status_code == 200  # the API's own origin
    allowed = build_container(Settings.from_env(ENV | {"WOTR_CORS_ORIGINS": "https://*.example.com"}), with_workers=False)
    with TestClient(allowed.app()) as client:
        r = client.post("/v1/t", content=message, headers={"content-type": "text/plain", "origin": "https://app.example.com"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"


def test_a_repeated_message_id_is_one_event_whatever_its_sent_at(client, container):
    message = {"messageId": "m-retry", "userId": "u", "event": "E", "timestamp": "2026-11-26T09:15:00Z"}
    first = client.post("/v1/track", json=message | {"sentAt": "2026-11-26T09:15:01Z"})
    retry = client.post("/v1/track", json=message | {"sentAt": "2026-11-26T09:15:09Z"})  # a retry, later
    assert first.json()["duplicate"] is False and retry.json() == {"success": True, "id": "m-retry", "duplicate": True}
    assert container.metadata_repo().count() == 1


# -- Segment's Python SDK against a real wotr API -----------------------------------------


@contextmanager
def serving(env: dict[str, str]) -> Iterator[tuple[str, object]]:
    """The API on a real uvicorn server on 127.0.0.1 (an ephemeral port), in a thread."""
    container = build_container(Settings.from_env(env), with_workers=False)
    with uvicorn_serving(container) as port:
        yield f"http://127.0.0.1:{port}", container


@pytest.fixture
def api():
    with serving(ENV) as running:
        yield running


def sdk(host: str, errors: list, **options) -> Client:
    """Segment's client, pointed at wotr, failing fast: what it reports goes to `errors`."""
    options = {"timeout": 5, "max_retries": 1, "max_total_backoff_duration": 5, "upload_interval": 0.05} | options
    return Client("wk-test", host=host, on_error=lambda e, batch: errors.append((e, batch)), **options)


def test_every_call_of_the_python_sdk_lands_as_an_event(api):
    host, container = api
    errors: list = []
    client = sdk(host, errors, gzip=True)
    sent = datetime.now(UTC) - timedelta(seconds=30)
    client.track("u-1", "Order Completed", {"revenue": 39.5}, timestamp=sent, message_id="m-track")
    client.identify("u-1", {"email": "ada@example.com"}, message_id="m-identify")
    client.page("u-1", name="Pricing", properties={"url": "https://example.com/pricing"}, message_id="m-page")
    client.screen("u-1", name="Checkout", message_id="m-screen")
    client.group("u-1", "acme", {"employees": 120}, message_id="m-group")
    client.alias("a-7f3e", "u-1", message_id="order 1/2 (not a wotr id)")
    client.flush()
    client.join()
    assert errors == []
    alias_id = "seg-" + hashlib.sha256(b"order 1/2 (not a wotr id)").hexdigest()
    ids = ["m-track", "m-identify", "m-page", "m-screen", "m-group", alias_id]
    rows = container.metadata_repo().find(ids)
    assert {i: rows[i].type for i in ids} == {
        "m-track": "track:Order Completed", "m-identify": "identify", "m-page": "page", "m-screen": "screen",
        "m-group": "group", alias_id: "alias"}
    track = archived(container, "m-track")
    assert track.payload["properties"] == {"revenue": 39.5} and track.payload["context"]["library"]["name"] == (
        "analytics-python")
    assert abs(track.timestamp - sent) < timedelta(seconds=5)  # corrected by a skew of the transfer only
    assert archived(container, alias_id).payload["messageId"] == "order 1/2 (not a wotr id)"


def test_a_retry_of_the_same_message_id_is_one_event(api):
    host, container = api
    errors: list = []
    client = sdk(host, errors)
    for _ in range(2):  # two uploads (each with its own sentAt): the second is the SDK's retry
        client.track("u-1", "Order Completed", {"order": 7}, message_id="m-retried",
                     timestamp=datetime(2026, 11, 26, 9, 15, tzinfo=UTC))
        client.flush()
    client.join()
    assert errors == []
    assert container.metadata_repo().count() == 1 and container.metadata_repo().get("m-retried").type == (
        "track:Order Completed")


def test_a_batch_with_one_invalid_message_keeps_the_valid_ones(api):
    host, container = api
    errors: list = []
    client = sdk(host, errors, upload_size=3, upload_interval=1)  # the three go in one request
    client.track("u-1", "Viewed", message_id="b-1")
    client.track("u-1", "Too Old", message_id="b-2", timestamp=datetime(1800, 1, 1, tzinfo=UTC))  # stores refuse it
    client.identify("u-1", {"plan": "pro"}, message_id="b-3")
    client.flush()
    client.join()
    assert errors == []  # 200: the SDK counts the batch as delivered, as Segment's API would have it
    assert set(container.metadata_repo().find(["b-1", "b-2", "b-3"])) == {"b-1", "b-3"}
    # What the SDK's transport got back, for a batch sent the same way.
    messages = [{"type": "track", "userId": "u", "event": "V", "messageId": "b-4"},
                {"type": "track", "userId": "u", "event": "V", "messageId": "b-5", "timestamp": "1800-01-01T00:00:00Z"}]
    answer = sdk_post("wk-test", host, batch=messages, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["success"] is True and (answer.json()["accepted"], answer.json()["rejected"]) == (1, 1)
    assert answer.json()["results"][1]["field"] == "timestamp"


def test_a_batch_with_no_valid_message_is_a_400_the_sdk_does_not_retry(api):
    host, container = api
    with pytest.raises(APIError) as info:
        sdk_post("wk-test", host, batch=[{"type": "track", "userId": "u", "messageId": "x-1"}], timeout=5)
    assert info.value.status == 400 and "event" in info.value.message
    assert nothing_written(container)
