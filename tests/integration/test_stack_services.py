"""The services the test fixtures hand out really work, and the native stack behaves.

The first group uses each service through the pytest plugin's fixtures (whatever source
they resolved to). The second group drives the native stack itself: `status`, an
idempotent `up`, stopping and starting one service, and the plugin's CI rule.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from wotr_adapters.connections import (
    ClickHouseConnection,
    KafkaConnection,
    PostgresConnection,
    S3Connection,
)
from wotr_apps.settings import Settings
from wotr_testing.pytest_plugin import docker_available, stack_env_file

STACK = [sys.executable, "-m", "wotr_testing.stack"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> bytes:
    with NO_PROXY.open(url, timeout=10) as response:
        assert response.status == 200, f"{url} answered {response.status}"
        return response.read()


def _minio(conn: S3Connection):
    from minio import Minio

    return Minio(conn.endpoint, access_key=conn.access_key, secret_key=conn.secret_key,
                 secure=conn.secure, region=conn.region)


# -- each service through its fixture ------------------------------------------------


def test_kafka_delivers_a_produced_message_to_a_consumer(kafka_connection: KafkaConnection, unique_name: str):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_connection.bootstrap})
    admin.create_topics([NewTopic(unique_name, num_partitions=1, replication_factor=1)])[unique_name].result(30)
    try:
        producer = Producer({"bootstrap.servers": kafka_connection.bootstrap, "acks": "all"})
        delivered = []
        producer.produce(unique_name, key=b"event-1", value=b'{"n": 1}',
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
        assert producer.flush(30) == 0
        assert delivered == [(None, 0)]

        consumer = Consumer({"bootstrap.servers": kafka_connection.bootstrap, "group.id": unique_name,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([unique_name])
        try:
            received = None
            deadline = time.monotonic() + 60
            while received is None and time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is not None and message.error() is None:
                    received = message
            assert received is not None, "no message consumed within 60s"
            assert (received.key(), received.value(), received.offset()) == (b"event-1", b'{"n": 1}', 0)
        finally:
            consumer.close()
    finally:
        admin.delete_topics([unique_name])


def test_s3_stores_and_returns_an_object(s3_connection: S3Connection, unique_name: str):
    client = _minio(s3_connection)
    client.make_bucket(unique_name)
    body = json.dumps({"payload": {"n": 42}}).encode()
    try:
        client.put_object(unique_name, "raw/dt=2026-01-01/a.json", io.BytesIO(body), len(body),
                          content_type="application/json")
        response = client.get_object(unique_name, "raw/dt=2026-01-01/a.json")
        try:
            assert response.read() == body
        finally:
            response.close()
            response.release_conn()
        stat = client.stat_object(unique_name, "raw/dt=2026-01-01/a.json")
        assert stat.size == len(body)
        assert stat.content_type == "application/json"
        listed = [o.object_name for o in client.list_objects(unique_name, prefix="raw/", recursive=True)]
        assert listed == ["raw/dt=2026-01-01/a.json"]
        assert client.bucket_exists(unique_name)
        assert not client.bucket_exists(unique_name + "x")
    finally:
        for item in client.list_objects(unique_name, recursive=True):
            client.remove_object(unique_name, item.object_name)
        client.remove_bucket(unique_name)


def test_postgres_creates_inserts_and_selects(postgres_connection: PostgresConnection, unique_name: str):
    import psycopg

    with psycopg.connect(postgres_connection.conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {unique_name}")
        try:
            conn.execute(f"CREATE TABLE {unique_name}.events (id text PRIMARY KEY, size int NOT NULL)")
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {unique_name}.events VALUES (%s, %s)", [("a", 3), ("b", 5)])
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(f"INSERT INTO {unique_name}.events VALUES ('a', 9)")
            rows = conn.execute(f"SELECT id, size FROM {unique_name}.events ORDER BY id").fetchall()
            assert rows == [("a", 3), ("b", 5)]
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (
                postgres_connection.user, postgres_connection.dbname)
        finally:
            conn.execute(f"DROP SCHEMA {unique_name} CASCADE")


def test_clickhouse_answers_queries(clickhouse_connection: ClickHouseConnection, unique_name: str):
    import clickhouse_connect

    if clickhouse_connection.dsn:
        client = clickhouse_connect.get_client(dsn=clickhouse_connection.dsn)
    else:
        client = clickhouse_connect.get_client(host=clickhouse_connection.host, port=clickhouse_connection.port,
                                               username=clickhouse_connection.user,
                                               password=clickhouse_connection.password)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {clickhouse_connection.database}")
        table = f"{clickhouse_connection.database}.{unique_name}"
        client.command(f"CREATE TABLE {table} (id String, n UInt32) ENGINE = MergeTree ORDER BY id")
        try:
            client.insert(table, [["a", 1], ["b", 2], ["c", 4]], column_names=["id", "n"])
            result = client.query(f"SELECT count(), sum(n) FROM {table}")
            assert result.result_rows == [(3, 7)]
            assert client.query(f"SELECT id FROM {table} WHERE n > 1 ORDER BY id").result_rows == [("b",), ("c",)]
        finally:
            client.command(f"DROP TABLE IF EXISTS {table}")
    finally:
        client.close()


def test_prometheus_is_ready_and_scrapes_the_wotr_apps(prometheus_url: str):
    assert b"Ready" in _get(f"{prometheus_url}/-/ready")
    config = json.loads(_get(f"{prometheus_url}/api/v1/status/config"))["data"]["yaml"]
    for job in ("wotr-api", "wotr-consumer", "wotr-relay"):
        assert f"job_name: {job}" in config
    targets = json.loads(_get(f"{prometheus_url}/api/v1/targets"))["data"]["activeTargets"]
    scraped = {target["labels"]["job"]: target["scrapeUrl"] for target in targets}
    assert scraped["wotr-api"] == "http://127.0.0.1:8000/metrics"
    assert scraped["wotr-consumer"] == "http://127.0.0.1:9464/metrics"
    assert scraped["wotr-relay"] == "http://127.0.0.1:9465/metrics"
    assert {target["scrapeInterval"] for target in targets} == {"5s"}


# -- the native stack itself ---------------------------------------------------------


@pytest.fixture(scope="module")
def native_stack():
    """The native stack, brought up (a no-op when it already runs)."""
    from wotr_testing.stack import Stack, StackError

    stack = Stack()
    try:
        stack.up()
    except StackError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"native stack could not be started: {exc}", pytrace=False)
        pytest.skip(f"native stack could not be started: {exc}")
    return stack


def _pids(stack) -> dict[str, int | None]:
    return {row.name: row.pid for row in stack.status()}


def test_status_lists_every_service_running_and_healthy(native_stack):
    done = subprocess.run([*STACK, "status"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert set(lines) == {"kafka", "s3", "postgres", "prometheus", "alertmanager"}
    for name, line in lines.items():
        service = native_stack.services[name]
        fields = line.split()
        assert fields[1:3] == ["running", str(service.pid())], line
        assert fields[3] == service.endpoint and fields[4] == "healthy", line
        assert service.endpoint.startswith("127.0.0.1:")


def test_second_up_is_fast_starts_nothing_and_prints_the_env(native_stack):
    before = _pids(native_stack)
    began = time.monotonic()
    done = subprocess.run([*STACK, "up"], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert elapsed < 10, f"a repeated up took {elapsed:.1f}s"
    assert _pids(native_stack) == before and all(before.values())
    assert "starting" not in done.stderr

    exported = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines())
    written = dict(line.split("=", 1) for line in stack_env_file().read_text().splitlines())
    assert exported == written
    ports = {name: service.port for name, service in native_stack.services.items()}
    assert Settings.from_env(written, profile="local").s3 == S3Connection(endpoint=f"127.0.0.1:{ports['s3']}")
    assert Settings.from_env(written, profile="local").kafka.bootstrap == f"127.0.0.1:{ports['kafka']}"
    assert Settings.from_env(written, profile="local").postgres == PostgresConnection(port=ports["postgres"])
    assert written["PROMETHEUS_URL"] == f"http://127.0.0.1:{ports['prometheus']}"
    if not os.environ.get("WOTR_STACK_PORT_OFFSET"):  # the defaults wotr's settings assume
        assert ports == {"kafka": 9092, "s3": 9000, "postgres": 5433, "prometheus": 9090, "alertmanager": 9095}


def test_one_service_stops_and_starts_again_keeping_its_data(native_stack, unique_name: str):
    s3 = native_stack.services["s3"]
    client = _minio(Settings.from_env(native_stack.env(), profile="local").s3)
    client.make_bucket(unique_name)
    client.put_object(unique_name, "kept.txt", io.BytesIO(b"still here"), 10)
    others = {name: pid for name, pid in _pids(native_stack).items() if name != "s3"}
    old_pid = s3.pid()
    try:
        done = subprocess.run([*STACK, "stop", "s3"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert s3.pid() is None and not native_stack.is_healthy("s3")
        assert subprocess.run([*STACK, "status"], capture_output=True, timeout=60).returncode == 1

        native_stack.start("s3")
        assert s3.pid() not in (None, old_pid)
        assert client.get_object(unique_name, "kept.txt").read() == b"still here"
        assert {name: pid for name, pid in _pids(native_stack).items() if name != "s3"} == others
    finally:
        native_stack.start("s3")
        client.remove_object(unique_name, "kept.txt")
        client.remove_bucket(unique_name)


def test_logs_show_each_service_log(native_stack):
    done = subprocess.run([*STACK, "logs", "postgres", "-n", "50"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "postgres.log" in done.stdout and "ready to accept connections" in done.stdout


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_service_that_cannot_be_had_fails_under_ci_and_skips_otherwise(tmp_path: Path, ci: str):
    if docker_available():
        pytest.skip("a Docker engine answers here, so the fixture would use testcontainers")
    broken_home = tmp_path / "home"
    broken_home.mkdir()
    (broken_home / "run").write_text("a file where the stack needs a directory")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        def test_needs_kafka(kafka_connection):
            assert kafka_connection.bootstrap
    """))
    env = {k: v for k, v in os.environ.items()
           if k not in {"CI", "KAFKA_BOOTSTRAP", "PYTEST_ADDOPTS"} and not k.startswith("PYTEST_")}
    env.update(WOTR_STACK_HOME=str(broken_home), CI=ci)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_inner.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "native stack could not start kafka" in done.stdout, done.stdout
    if ci:
        assert done.returncode == 1 and "1 error" in done.stdout, done.stdout
        assert "CI is set" in done.stdout
    else:
        assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout
