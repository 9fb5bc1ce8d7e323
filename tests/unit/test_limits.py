"""Rate limits (a token bucket per key, per client address when keys are off; 429 with
Retry-After and the RateLimit headers) and bounded metric labels (one series per route,
not per path)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from litestar.testing import TestClient

from wotr_apps.api.limits import LocalBuckets, RateLimiter
from wotr_apps.container import build_container
from wotr_apps.keys_cli import create_key
from wotr_apps.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(rate: float, burst: int = 0) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(LocalBuckets(clock=clock), rate, burst), clock


def take(rl: RateLimiter, bucket: str = "b"):
    return asyncio.run(rl.take(bucket))


# -- the bucket ----------------------------------------------------------------------------------


def test_a_burst_passes_then_one_request_per_interval():
    rl, clock = limiter(2, burst=3)  # 2 per second, 3 at once
    decisions = [take(rl) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert [d.limit for d in decisions] == [3] * 4
    assert decisions[2].reset == 2  # 1.5 s until the bucket is full, rounded up
    assert decisions[3].retry_after == 1  # one token back after 0.5 s: at least 1 s
    clock.now += 0.5
    assert take(rl).allowed and not take(rl).allowed
    clock.now += 10  # a full bucket again, not more
    assert [take(rl).allowed for _ in range(4)] == [True, True, True, False]


def test_retry_after_says_when_the_next_request_passes():
    rl, clock = limiter(0.1, burst=1)  # one request every 10 s
    assert take(rl).allowed
    refused = take(rl)
    assert not refused.allowed and refused.retry_after == 10
    assert refused.headers()["Retry-After"] == "10"
    clock.now += 9.5
    assert take(rl).retry_after == 1
    clock.now += 0.5
    assert take(rl).allowed


def test_buckets_are_per_client_and_the_burst_defaults_to_the_rate():
    rl, _ = limiter(3)  # burst 0: the rate rounded up
    assert rl.burst == 3
    assert [take(rl, "a").allowed for _ in range(4)] == [True, True, True, False]
    assert take(rl, "b").allowed
    assert RateLimiter(LocalBuckets(), 0.5).burst == 1


def test_many_clients_do_not_grow_the_buckets_without_bound():
    clock = Clock()
    buckets = LocalBuckets(clock=clock, max_buckets=100)
    for i in range(1000):
        buckets.take(f"c{i}", 1.0, 1)
        clock.now += 0.01
    assert len(buckets._tat) <= 101


def test_the_settings_turn_limits_on_and_off():
    assert Settings.from_env({}).rate_limit_per_second == 0  # off by default
    s = Settings.from_env({"WOTR_RATE_LIMIT_PER_SECOND": "2.5", "WOTR_RATE_LIMIT_BURST": "10"})
    assert (s.rate_limit_per_second, s.rate_limit_burst) == (2.5, 10)
    assert build_container(Settings.from_env({"WOTR_PROFILE": "memory"})).rate_limiter() is None


# -- through the API ---------------------------------------------------------------------------


def limited_app(**env: str):
    settings = Settings.from_env({"WOTR_PROFILE": "memory", "WOTR_RATE_LIMIT_PER_SECOND": "0.01",
                                  "WOTR_RATE_LIMIT_BURST": "3", **env})
    return build_container(settings, with_workers=False)


def test_past_the_burst_the_api_answers_429_with_retry_after_and_the_ratelimit_headers():
    container = limited_app()
    with TestClient(container.app()) as client:
        answers = [client.post("/ingest", json={"payload": {"n": i}}) for i in range(3)]
        assert [r.status_code for r in answers] == [202] * 3
        assert [r.headers["ratelimit-remaining"] for r in answers] == ["2", "1", "0"]
        assert {r.headers["ratelimit-limit"] for r in answers} == {"3"}
        assert int(answers[-1].headers["ratelimit-reset"]) == 300  # 3 tokens at one per 100 s
        refused = client.post("/ingest", json={"payload": {"n": 3}})
        batch = client.post("/ingest/batch", json=[{"payload": {}}])
        # A bad request still spends a token (the limit counts requests), and says so.
        assert client.get("/health").status_code == 200 and "ratelimit-limit" not in client.get("/health").headers
    for r in (refused, batch):
        assert r.status_code == 429
        assert r.json()["status_code"] == 429 and r.json()["error"] == "rate_limited"
        assert "0.01 requests per second" in r.json()["detail"]
        assert r.headers["retry-after"] == "100"
        assert (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == ("3", "0")
    assert container.metadata_repo().count() == 3  # the refused ones wrote nothing


def test_an_answer_that_is_not_a_202_carries_the_headers_too():
    container = limited_app()
    with TestClient(container.app()) as client:
        r = client.post("/ingest", json={"payload": "not an object"})
    assert r.status_code == 422 and r.headers["ratelimit-remaining"] == "2"


def test_with_keys_each_key_has_its_own_bucket():
    container = limited_app(WOTR_REQUIRE_WRITE_KEY="true")
    _, web = create_key(container.key_store(), "web")
    _, ios = create_key(container.key_store(), "ios")
    with TestClient(container.app()) as client:
        web_answers = [client.post("/ingest", json={"payload": {}}, headers={"X-Write-Key": web}).status_code
                       for _ in range(4)]
        ios_answers = [client.post("/ingest", json={"payload": {}}, headers={"X-Write-Key": ios}).status_code
                       for _ in range(2)]
        # A request without a valid key is refused before it can spend anybody's token.
        assert client.post("/ingest", json={"payload": {}}).status_code == 401
    assert web_answers == [202, 202, 202, 429] and ios_answers == [202, 202]


def test_without_keys_each_client_address_has_its_own_bucket():
    app = limited_app().app()

    async def send(address: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://wotr") as client:
            return (await client.post("/ingest/batch", json=[{"payload": {}}])).status_code

    async def scenario():
        first = [await send("10.0.0.1") for _ in range(4)]
        second = [await send("10.0.0.2") for _ in range(2)]
        return first, second

    assert asyncio.run(scenario()) == ([202, 202, 202, 429], [202, 202])


def test_limits_off_send_no_ratelimit_headers():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    with TestClient(container.app()) as client:
        answers = [client.post("/ingest", json={"payload": {}}) for _ in range(20)]
    assert {r.status_code for r in answers} == {202}
    assert not any(h.startswith("ratelimit") for h in answers[0].headers)


# -- bounded metric labels ---------------------------------------------------------------------


def _series(text: str, name: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith(name + "{")}


def test_the_http_route_label_is_the_route_template_not_the_path():
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    name = "http_server_request_duration_seconds_count"
    with TestClient(container.app()) as client:
        for i in range(10):
            client.get(f"/events/missing-{i}")
        client.post("/ingest", json={"payload": {}})
        before = _series(client.get("/metrics").text, name)
        for i in range(10, 1000):
            client.get(f"/events/missing-{i}")
        after_text = client.get("/metrics").text
    after = _series(after_text, name)
    assert len(after) == len(before), sorted(after - before)[:5]
    routes = set(re.findall(r'http_route="([^"]*)"', "\n".join(after)))
    assert "GET /events/{event_id}" in routes and "POST /ingest" in routes
    assert not any("missing-" in r for r in routes)
    counts = [float(s.rsplit(" ", 1)[1]) for s in after_text.splitlines()
              if s.startswith(name + "{") and "GET /events/{event_id}" in s]
    assert sum(counts) == 1000
