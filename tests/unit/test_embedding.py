"""The public embedding API (`import wotr`): same guarantees and errors as the HTTP API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wotr
from wotr.errors import Conflict, ConfigError, InvalidEvent, NotFound, PayloadTooLarge

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def platform():
    with wotr.open("memory", workers=False) as p:
        yield p


def test_ingest_get_and_the_retry_rules(platform):
    first = platform.ingest({"a": 1}, id="order-1", source="shop", type="order")
    assert not first.duplicate and platform.get("order-1").object_key == first.object_key
    again = platform.ingest({"a": 1}, id="order-1", source="shop", type="order")
    assert again.duplicate and again.object_key == first.object_key
    with pytest.raises(Conflict, match="order-1"):
        platform.ingest({"a": 2}, id="order-1", source="shop", type="order")
    with pytest.raises(NotFound):
        platform.get("never-sent")


def test_events_are_checked_as_the_http_api_checks_them(platform):
    with pytest.raises(InvalidEvent) as bad_source:
        platform.ingest({}, source="a\x00b")
    assert bad_source.value.field == "source"
    deep: dict = {}
    for _ in range(100):
        deep = {"d": deep}
    with pytest.raises(InvalidEvent) as too_deep:
        platform.ingest(deep)
    assert too_deep.value.field == "payload"
    with pytest.raises(InvalidEvent) as bad_id:
        platform.ingest({}, id="no spaces")
    assert bad_id.value.field == "id"
    answers = platform.ingest_many([{"payload": {"n": 1}}, {"payload": 1}, {"payload": {}, "extra": 1}])
    assert isinstance(answers[0], wotr.Receipt)
    assert isinstance(answers[1], InvalidEvent) and isinstance(answers[2], InvalidEvent)
    assert answers[2].field == "extra"


def test_settings_given_in_code_win_over_the_environment():
    env = {"WOTR_MAX_BODY_BYTES": "200"}
    with wotr.open("memory", env=env, workers=False) as small:
        with pytest.raises(PayloadTooLarge):
            small.ingest({"blob": "x" * 500})
    with wotr.open("memory", env=env, workers=False, max_body_bytes=4096) as large:
        assert not large.ingest({"blob": "x" * 500}).duplicate
    with pytest.raises(ConfigError) as unknown:
        wotr.open("memory", max_bodybytes=1)
    assert unknown.value.variable == "max_bodybytes"
    with pytest.raises(ConfigError) as invalid:
        wotr.open("memory", max_body_bytes="lots")
    assert invalid.value.variable == "max_body_bytes"


def test_the_embedded_profile_loads_analytics_rows_in_process(tmp_path, wotr_chdb_dsn, unique_name):
    # One in-process engine per test process: this platform's rows get a database of their own in it.
    with wotr.open("embedded", data_dir=tmp_path, clickhouse_dsn=wotr_chdb_dsn, clickhouse_database=unique_name) as platform:
        receipt = platform.ingest({"n": 1}, type="t")
        deadline = time.monotonic() + 20
        while not (rows := platform.latest(5)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.id for r in rows] == [receipt.id]
    assert (tmp_path / "metadata.db").exists()


def test_async_ingests_share_flushes_and_keep_the_rules():
    async def scenario():
        async with wotr.open_async("memory", workers=False) as platform:
            receipts = await asyncio.gather(*(platform.ingest({"n": n}, id=f"a-{n}") for n in range(20)))
            with pytest.raises(Conflict):
                await platform.ingest({"n": 99}, id="a-0")
            meta = await platform.get("a-3")
            return receipts, meta

    receipts, meta = asyncio.run(scenario())
    assert [r.id for r in receipts] == [f"a-{n}" for n in range(20)]
    assert len({r.object_key for r in receipts}) < 20  # concurrent calls were flushed together
    assert meta.id == "a-3"


def test_the_example_service_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples/embedding/order_service.py"), str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("accepted order-") == 5
    assert "retry of order-1: duplicate=True" in out.stdout
    assert "refused: event id 'order-1' was already accepted with different content" in out.stdout
    assert "analytics rows: ['order-1', 'order-2', 'order-3', 'order-4', 'order-5']" in out.stdout
