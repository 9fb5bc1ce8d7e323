"""Write keys and rate limits on the local profile: two API processes (`wotr serve
--api-only`) on one PostgreSQL, keys managed with `wotr keys` as a third process.

- a key created by the command works on both processes at once; its source stamps the
  events; a request without a valid key is 401;
- the rate limit is one bucket per key across both processes (PostgreSQL), not one per
  process;
- a key revoked by the command is refused by both processes within seconds, with no
  restart.

Plus the PostgreSQL token bucket on its own: exact under concurrent takers.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from wotr_adapters.connections import PostgresConnection
from wotr_adapters.postgres import postgres_pool
from wotr_adapters.postgres_keys import PostgresRateLimiter

from pipeline_harness import WOTR, Pipeline, free_port, wait_until

CACHE_SECONDS = 1.0


def drop_schema(conn: PostgresConnection, schema: str) -> None:
    with psycopg.connect(conn.conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def apis(tmp_path: Path, s3_connection, kafka_connection, postgres_connection) -> Iterator[tuple[Pipeline, Pipeline]]:
    """Two API processes sharing one namespace (bucket, topic, schema), keys required,
    0.05 requests/s per key with a burst of 4."""
    name = f"wkeys{uuid.uuid4().hex[:10]}"
    env = {"WOTR_REQUIRE_WRITE_KEY": "true", "WOTR_WRITE_KEY_CACHE_SECONDS": str(CACHE_SECONDS),
           "WOTR_RATE_LIMIT_PER_SECOND": "0.05", "WOTR_RATE_LIMIT_BURST": "4"}
    pair = []
    for side in ("a", "b"):
        workdir = tmp_path / side
        workdir.mkdir()
        pair.append(Pipeline(workdir, s3_connection, kafka_connection, postgres_connection, name=name,
                             api_port=free_port(), extra_env=env))
    try:
        for api in pair:
            api.start("serve")
        yield pair[0], pair[1]
    finally:
        for api in pair:
            api.stop_all()
        drop_schema(postgres_connection, name)


def keys(api: Pipeline, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*WOTR, "keys", *args], env=api.env("serve"), cwd=api.workdir,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def post(api: Pipeline, headers: dict[str, str], n: int = 0) -> httpx.Response:
    return httpx.post(f"{api.url}/ingest", json={"payload": {"n": n}, "source": "client"}, headers=headers, timeout=30)


def test_keys_limits_and_revocation_hold_across_api_processes(apis):
    a, b = apis
    key = keys(a, "create", "--name", "it", "--source", "it-source", "-q").stdout.strip()
    key_id = key[3:19]

    # Created by another process: accepted by both at once, in every form; none is 401.
    first = post(a, {"X-Write-Key": key}, 1)
    assert first.status_code == 202, first.text
    assert post(b, {"Authorization": f"Bearer {key}"}, 2).status_code == 202
    refused = post(b, {})
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert "www-authenticate" in refused.headers
    event = httpx.get(f"{b.url}/events/{first.json()['id']}", timeout=10).json()
    assert event["source"] == "it-source"  # the key's source won over the client's
    assert httpx.get(f"{a.url}/ready", timeout=10).json()["checks"]["key_store"] == "ok"

    # One bucket across both processes: 4 at once in all, not 4 per process.
    limited = keys(a, "create", "--name", "limited", "-q").stdout.strip()
    answers = [post(api, {"X-Write-Key": limited}, i) for i, api in enumerate((a, b, a, b, a, b))]
    assert [r.status_code for r in answers] == [202, 202, 202, 202, 429, 429]
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["3", "2", "1", "0", "0", "0"]
    assert int(answers[-1].headers["retry-after"]) >= 1 and answers[-1].json()["error"] == "rate_limited"

    # Revoked by the command: refused by both processes, no restart.
    assert f"revoked {key_id}" in keys(a, "revoke", key_id).stdout
    for api in (a, b):
        wait_until(lambda api=api: post(api, {"X-Write-Key": key}).status_code == 401,
                   CACHE_SECONDS + 10, f"the revoked key to be refused on {api.url}", interval=0.1)
    assert post(a, {"X-Write-Key": key}).json()["detail"] == f"write key {key_id} was revoked"
    listing = keys(a, "list").stdout
    assert key_id in listing and "wk_" not in listing


def test_the_postgres_token_bucket_is_exact_under_concurrent_takers(postgres_connection):
    schema = f"it_rl_{uuid.uuid4().hex[:10]}"
    limiter = PostgresRateLimiter(partial(postgres_pool, postgres_connection, max_size=8), schema=schema)
    limiter.start()
    try:
        results: list[bool] = []
        lock = threading.Lock()
        start = threading.Barrier(16)

        def taker() -> None:
            start.wait()
            for _ in range(5):
                allowed, _ = limiter.take("shared", 100.0, 10)  # one per 100 s, 10 at once
                with lock:
                    results.append(allowed)

        threads = [threading.Thread(target=taker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 80 and results.count(True) == 10
        allowed, ahead = limiter.take("shared", 100.0, 10)
        assert not allowed and 900 < ahead <= 1000  # the bucket is 10 intervals ahead of now
        allowed, ahead = limiter.take("other", 100.0, 10)
        assert allowed and 99 < ahead <= 100
    finally:
        limiter.close()
        drop_schema(postgres_connection, schema)
