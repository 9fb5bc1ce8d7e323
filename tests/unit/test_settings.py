"""Configuration: the seed's variable names, defaults, and errors that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wotr_apps.settings import Settings
from wotr_domain.errors import ConfigError


def test_defaults_are_the_embedded_profile_on_loopback(tmp_path):
    s = Settings.from_env({"WOTR_DATA_DIR": str(tmp_path)})
    assert (s.profile, s.host, s.port, s.max_body_bytes) == ("embedded", "127.0.0.1", 8000, 1024 * 1024)
    assert s.clickhouse.dsn == f"chdb://{tmp_path / 'clickhouse'}"
    assert (s.bucket, s.topic, s.kafka.dead_letter_topic) == ("raw-data", "ingest-events", "ingest-events.dlq")


def test_http_edge_limits_default_and_read_their_variables():
    s = Settings.from_env({})
    assert (s.max_headers, s.max_header_bytes, s.header_read_timeout_seconds, s.body_read_timeout_seconds) == (
        100, 64 * 1024, 10.0, 10.0)
    s = Settings.from_env({"WOTR_MAX_HEADERS": "50", "WOTR_MAX_HEADER_BYTES": "8192",
                           "WOTR_HEADER_READ_TIMEOUT_SECONDS": "2.5", "WOTR_BODY_READ_TIMEOUT_SECONDS": "30"})
    assert (s.max_headers, s.max_header_bytes, s.header_read_timeout_seconds, s.body_read_timeout_seconds) == (
        50, 8192, 2.5, 30.0)


def test_local_profile_reads_the_seed_variables():
    s = Settings.from_env({
        "WOTR_PROFILE": "local", "MINIO_ENDPOINT": "s3.internal:9000", "MINIO_BUCKET": "raw",
        "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": "sk", "KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "KAFKA_TOPIC": "events", "POSTGRES_HOST": "db", "POSTGRES_PORT": "6543", "POSTGRES_USER": "u",
        "POSTGRES_PASSWORD": "p@ss/word", "POSTGRES_DB": "meta", "CLICKHOUSE_HOST": "ch", "CLICKHOUSE_PORT": "8124",
        "CLICKHOUSE_DB": "analytics",
    })
    assert (s.s3.endpoint, s.s3.bucket, s.s3.access_key) == ("s3.internal:9000", "raw", "ak")
    assert (s.kafka.bootstrap, s.kafka.topic) == ("k1:9092,k2:9092", "events")
    assert s.postgres.conninfo == "postgresql://u:p%40ss%2Fword@db:6543/meta"
    assert (s.clickhouse.dsn, s.clickhouse.host, s.clickhouse.port, s.clickhouse.database) == (None, "ch", 8124, "analytics")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WOTR_PROFILE": "prod"}, "WOTR_PROFILE"),
        ({"WOTR_PORT": "eighty"}, "WOTR_PORT"),
        ({"WOTR_MAX_BODY_BYTES": "-1"}, "WOTR_MAX_BODY_BYTES"),
        ({"WOTR_CONSUMER_BATCH_SECONDS": "soon"}, "WOTR_CONSUMER_BATCH_SECONDS"),
        ({"WOTR_MAX_HEADERS": "many"}, "WOTR_MAX_HEADERS"),
        ({"WOTR_MAX_HEADERS": "2"}, "WOTR_MAX_HEADERS"),
        ({"WOTR_MAX_HEADER_BYTES": "100"}, "WOTR_MAX_HEADER_BYTES"),
        ({"WOTR_HEADER_READ_TIMEOUT_SECONDS": "0"}, "WOTR_HEADER_READ_TIMEOUT_SECONDS"),
        ({"WOTR_HEADER_READ_TIMEOUT_SECONDS": "inf"}, "WOTR_HEADER_READ_TIMEOUT_SECONDS"),
        ({"WOTR_BODY_READ_TIMEOUT_SECONDS": "nan"}, "WOTR_BODY_READ_TIMEOUT_SECONDS"),
        ({"WOTR_BODY_READ_TIMEOUT_SECONDS": "-1"}, "WOTR_BODY_READ_TIMEOUT_SECONDS"),
        ({"WOTR_PROFILE": "local", "POSTGRES_PORT": "70000"}, "POSTGRES_PORT"),
        ({"WOTR_PROFILE": "local", "MINIO_ENDPOINT": "http://minio:9000"}, "MINIO_ENDPOINT"),
        ({"WOTR_PROFILE": "local", "KAFKA_PARTITIONS": "0"}, "KAFKA_PARTITIONS"),
        ({"WOTR_PROFILE": "local", "KAFKA_BOOTSTRAP": " "}, "KAFKA_BOOTSTRAP"),
        ({"WOTR_PROFILE": "local", "POSTGRES_SCHEMA": "x; drop"}, "POSTGRES_SCHEMA"),
        ({"CLICKHOUSE_DSN": "mysql://x"}, "CLICKHOUSE_DSN"),
    ],
)
def test_an_invalid_value_names_its_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_the_cli_refuses_to_start_on_bad_configuration_and_says_why(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WOTR_PROFILE": "local", "POSTGRES_PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "wotr_apps.cli", "relay"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "POSTGRES_PORT must be a port number, got 'not-a-port'" in result.stderr
