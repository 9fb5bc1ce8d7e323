"""Configuration: the seed's variable names, defaults, and errors that name the variable.

Every variable wotr reads is declared once, in `wotr_apps.settings.VARIABLES`; the
README's Configuration table documents exactly those.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wotr_apps.settings import VARIABLES, Settings, variable
from wotr_domain.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


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
        ({"WOTR_CONSUMER_NICE": "20"}, "WOTR_CONSUMER_NICE"),
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


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WOTR_PROFILE": "local", "CLICKHOUSE_DB": "wotr; drop"}, "CLICKHOUSE_DB"),
        ({"CLICKHOUSE_PORT": "http"}, "CLICKHOUSE_PORT"),
        ({"WOTR_PROFILE": "local", "MINIO_SECURE": "maybe"}, "MINIO_SECURE"),
    ],
)
def test_values_the_adapters_would_refuse_are_refused_at_start_up(env, variable):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable


def test_the_servers_variables_count_on_the_local_profile_only():
    env = {"MINIO_BUCKET": "elsewhere", "KAFKA_TOPIC": "other", "POSTGRES_PORT": "nope"}
    s = Settings.from_env(env)
    assert (s.bucket, s.topic, s.postgres.port) == ("raw-data", "ingest-events", 5433)
    local = Settings.from_env({**env, "POSTGRES_PORT": "6000"}, profile="local")
    assert (local.profile, local.bucket, local.topic, local.postgres.port) == ("local", "elsewhere", "other", 6000)
    assert Settings.from_env({"CLICKHOUSE_DSN": "mysql://x", "WOTR_PROFILE": "memory"}).clickhouse.dsn is None


def test_the_cache_lives_in_the_stack_home_unless_set(tmp_path):
    s = Settings.from_env({})
    assert s.cache_dir == Path("~/.local/share/wotr-stack/cache").expanduser().resolve()
    s = Settings.from_env({"WOTR_STACK_HOME": str(tmp_path / "home")})
    assert (s.stack_home, s.cache_dir) == (tmp_path / "home", tmp_path / "home" / "cache")
    s = Settings.from_env({"WOTR_STACK_HOME": str(tmp_path / "home"), "WOTR_CACHE_DIR": str(tmp_path / "c")})
    assert s.cache_dir == tmp_path / "c"


# -- the declaration -------------------------------------------------------------------------


def test_each_variable_is_declared_once_and_fills_a_field_that_exists():
    names = [v.name for v in VARIABLES]
    targets = [v.target for v in VARIABLES]
    assert len(set(names)) == len(names) and len(set(targets)) == len(targets)
    plain = {f.name: f for f in dataclasses.fields(Settings)}
    for var in VARIABLES:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", var.name) and var.help.strip()
        section, _, attr = var.target.rpartition(".")
        owner = plain[section].default_factory() if section else Settings()
        assert hasattr(owner, attr), f"{var.name} fills {var.target}, which does not exist"
    # every plain setting but the derived ones is configurable
    assert {v.target for v in VARIABLES if not v.section} | {"s3", "kafka", "postgres", "clickhouse"} == set(plain)


def test_the_declared_defaults_are_the_settings_defaults():
    """Reading an empty environment on the local profile gives the value types' defaults."""
    read = Settings.from_env({}, profile="local")
    built = Settings(profile="local")
    for var in VARIABLES:
        if var.default is None or var.target in {"profile", "data_dir", "stack_home"}:
            continue
        section, _, attr = var.target.rpartition(".")
        expected = getattr(getattr(built, section) if section else built, attr)
        actual = getattr(getattr(read, section) if section else read, attr)
        assert actual == expected == var.read({}), var.name
    assert Settings.from_env({}).profile == Settings().profile == variable("WOTR_PROFILE").default
    assert read.data_dir == Path(variable("WOTR_DATA_DIR").default).resolve()
    assert read.stack_home == built.stack_home


def _readme_variables() -> set[str]:
    """The names in the first column of README.md's Configuration table.

    `POSTGRES_HOST/PORT/USER` stands for POSTGRES_HOST, POSTGRES_PORT and POSTGRES_USER.
    """
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for token in re.findall(r"`([A-Z][A-Z0-9_]*(?:/[A-Z0-9_]+)*)`", first):
            head, *rest = token.split("/")
            names.add(head)
            names.update(head.rpartition("_")[0] + "_" + part for part in rest)
    return names


def test_the_readme_documents_exactly_the_declared_variables():
    documented = _readme_variables()
    declared = {v.name for v in VARIABLES}
    assert "POSTGRES_PASSWORD" in documented and "WOTR_PROFILE" in documented  # the parsing is not vacuous
    assert declared - documented == set(), "read by the code, missing from the README's Configuration table"
    assert documented - declared == set(), "in the README's Configuration table, never read by the code"
