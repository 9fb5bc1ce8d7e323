"""The read-only SQL endpoint of the process that owns the in-process engine: ClickHouse
clients query the rows while loading goes on, nothing can write through it, and the
seed's query sees each event once as written."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import clickhouse_connect
import httpx
import pytest

from wotr_adapters.clickhouse import ClickHouseAnalyticsSink
from wotr_apps.sql_server import SqlServer
from wotr_domain.models import AnalyticsRow

SEED = "SELECT * FROM {db}.ingested_data ORDER BY created_at DESC LIMIT 10"  # the seed's query, in this test's database


def row(event_id: str) -> AnalyticsRow:
    return AnalyticsRow(id=event_id, created_at=datetime.now(UTC), event_time=None, source="s", type="t",
                        payload='{"n":1}', object_key=f"raw/{event_id}.json")


@pytest.fixture
def served(wotr_chdb_dsn, unique_name):
    # The process's one in-process engine (shared with other tests), a database of our own.
    engine = clickhouse_connect.get_client(dsn=wotr_chdb_dsn)
    sink = ClickHouseAnalyticsSink(engine, unique_name)
    sink.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = SqlServer(sink, "127.0.0.1", port)
    assert server.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).text == "Ok.\n":
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield sink, port, unique_name
    server.stop()
    engine.command("SET final = 0")  # the session is shared with the other tests of this process
    engine.command(f"DROP DATABASE IF EXISTS {unique_name}")


def test_a_clickhouse_client_runs_the_seed_query_while_rows_are_loaded(served):
    sink, port, db = served
    sink.write([row("a")])
    sink.write([row("a"), row("b")])  # a redelivered batch: "a" twice in the engine until merged
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port)
    assert sorted(r[0] for r in client.query(SEED.format(db=db)).result_rows) == ["a", "b"]  # once each, no FINAL written
    sink.write([row("c")])  # loading goes on between queries
    assert client.query(f"SELECT count() FROM {db}.ingested_data").result_rows == [(3,)]
    assert client.query(f"SELECT id FROM {db}.ingested_data WHERE id = {{id:String}}",
                        parameters={"id": "c"}).result_rows == [("c",)]


@pytest.mark.parametrize("statement", [
    "INSERT INTO wotr.ingested_data (id) VALUES ('x')", "DROP TABLE wotr.ingested_data", "SET readonly = 1",
    "SELECT 1; DROP TABLE wotr.ingested_data", "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SELECT 1 INTO OUTFILE '/tmp/wotr-should-not-exist'",
])
def test_nothing_writes_through_it_and_loading_is_unaffected(served, statement, tmp_path):
    sink, port, db = served
    r = httpx.post(f"http://127.0.0.1:{port}/", content=statement.replace("wotr.", f"{db}."), timeout=10)
    assert r.status_code == 400 and "read-only" in r.text
    sink.write([row("after")])  # the consumer's session is untouched: inserts still work
    assert httpx.get(f"http://127.0.0.1:{port}/", params={"query": f"SELECT count() FROM {db}.ingested_data"}).text == "1\n"


def test_curl_style_queries_choose_their_format(served):
    sink, port, db = served
    sink.write([row("a")])
    r = httpx.post(f"http://127.0.0.1:{port}/", content=f"SELECT id, type FROM {db}.ingested_data FORMAT JSONEachRow")
    assert r.status_code == 200 and r.json() == {"id": "a", "type": "t"}
