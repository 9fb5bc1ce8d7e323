"""Scaling out: the settings that size and protect each stage, and what the adapters build
from them: the Kafka topics (partitions, replication factor, min.insync.replicas; the
producer's acks=all), ClickHouse's cluster DDL (ON CLUSTER, replicated, sharded behind a
Distributed table) and the metadata retention job (`wotr metadata prune`). No server is
needed: a cluster cannot run here, so the generated statements are what is tested (and
parsed by the ClickHouse engine when chdb is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from dependency_injector import providers

from wotr_adapters.clickhouse import ClickHouseAnalyticsSink, _ddl
from wotr_adapters.connections import KafkaConnection
from wotr_adapters.kafka import KafkaEventBus, kafka_bus, topic_specs
from wotr_adapters.memory import InMemoryMetadataRepo
from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
from wotr_apps.container import build_container
from wotr_apps.metadata_cli import main as metadata_main
from wotr_apps.metadata_cli import prune
from wotr_apps.settings import Settings
from wotr_domain.errors import ConfigError
from wotr_domain.models import EventMetadata, EventStatus

LOCAL = {"WOTR_PROFILE": "local"}

# -- Kafka ---------------------------------------------------------------------------------


def test_replication_and_min_insync_replicas_default_to_one_node():
    s = Settings.from_env(LOCAL)
    assert (s.kafka.partitions, s.kafka.replication_factor, s.kafka.min_insync_replicas) == (3, 1, 1)


def test_the_production_values_are_read_and_reach_the_new_topics():
    s = Settings.from_env({**LOCAL, "KAFKA_TOPIC": "events", "KAFKA_PARTITIONS": "12",
                           "KAFKA_REPLICATION_FACTOR": "3", "KAFKA_MIN_INSYNC_REPLICAS": "2"})
    assert (s.kafka.partitions, s.kafka.replication_factor, s.kafka.min_insync_replicas) == (12, 3, 2)
    bus = kafka_bus(s.kafka)
    topics = {t.topic: t for t in bus.new_topics()}
    assert set(topics) == {"events", "events.dlq"}
    events, letters = topics["events"], topics["events.dlq"]
    assert (events.num_partitions, events.replication_factor, events.config) == (12, 3, {"min.insync.replicas": "2"})
    # The dead letters: one partition (in order), as durable as the events.
    assert (letters.num_partitions, letters.replication_factor, letters.config) == (1, 3, {"min.insync.replicas": "2"})
    assert [t.topic for t in bus.new_topics(["events.dlq"])] == ["events.dlq"]


def test_the_default_topics_set_min_insync_replicas_explicitly():
    specs = topic_specs("t", 3, 1, 1)
    assert [(s.name, s.num_partitions, s.replication_factor, s.config) for s in specs] == [
        ("t", 3, 1, {"min.insync.replicas": "1"}), ("t.dlq", 1, 1, {"min.insync.replicas": "1"})]


def test_the_producer_waits_for_every_in_sync_replica():
    """acks=all is what makes min.insync.replicas mean anything: a publish returns once
    that many replicas have the message (and the idempotent producer never duplicates it)."""
    producer = kafka_bus(KafkaConnection())._producer_config
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_REPLICATION_FACTOR": "0"}, "KAFKA_REPLICATION_FACTOR"),
        ({"KAFKA_REPLICATION_FACTOR": "three"}, "KAFKA_REPLICATION_FACTOR"),
        ({"KAFKA_MIN_INSYNC_REPLICAS": "0"}, "KAFKA_MIN_INSYNC_REPLICAS"),
        ({"KAFKA_MIN_INSYNC_REPLICAS": "2"}, "KAFKA_MIN_INSYNC_REPLICAS"),  # more than the 1 replica
        ({"KAFKA_REPLICATION_FACTOR": "3", "KAFKA_MIN_INSYNC_REPLICAS": "4"}, "KAFKA_MIN_INSYNC_REPLICAS"),
    ],
)
def test_impossible_kafka_durability_settings_name_their_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**LOCAL, **env})
    assert info.value.variable == variable


def test_the_adapter_refuses_more_in_sync_replicas_than_replicas():
    with pytest.raises(ConfigError, match="replication factor"):
        KafkaEventBus("127.0.0.1:1", "t", replication=2, min_insync_replicas=3)


# -- ClickHouse ----------------------------------------------------------------------------

# The single-node DDL as it was before cluster mode: the default must not change a byte.
SINGLE_NODE = [
    "CREATE DATABASE IF NOT EXISTS wotr",
    """CREATE TABLE IF NOT EXISTS wotr.ingested_data (
            id          String,
            created_at  DateTime64(6, 'UTC'),
            event_time  Nullable(DateTime64(6, 'UTC')),
            source      LowCardinality(String),
            type        LowCardinality(String),
            payload     String,
            object_key  String,
            loaded_at   DateTime64(6, 'UTC') DEFAULT now64(6)
        )
        ENGINE = ReplacingMergeTree(loaded_at)
        PARTITION BY toYYYYMM(created_at)
        ORDER BY id""",
]


def _flat(statement: str) -> str:
    return " ".join(statement.split())


def test_without_a_cluster_the_ddl_is_the_single_node_one():
    assert _ddl("wotr") == SINGLE_NODE
    assert _ddl("wotr", "") == SINGLE_NODE
    assert Settings.from_env({}).clickhouse.cluster == ""


def test_the_cluster_ddl_is_replicated_sharded_and_on_cluster():
    database, local, distributed = (_flat(s) for s in _ddl("analytics", "wotr_cluster"))
    assert database == "CREATE DATABASE IF NOT EXISTS analytics ON CLUSTER wotr_cluster"
    assert local.startswith("CREATE TABLE IF NOT EXISTS analytics.ingested_data_local ON CLUSTER wotr_cluster (")
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', "
            "loaded_at) PARTITION BY toYYYYMM(created_at) ORDER BY id") in local
    # Same columns as the single-node table.
    columns = _flat(SINGLE_NODE[1]).split("(", 1)[1].split(") ENGINE", 1)[0]
    assert columns in local
    assert distributed == (
        "CREATE TABLE IF NOT EXISTS analytics.ingested_data ON CLUSTER wotr_cluster AS analytics.ingested_data_local "
        "ENGINE = Distributed(wotr_cluster, analytics, ingested_data_local, cityHash64(id))")


class RecordingClient:
    """Stands in for clickhouse-connect: records commands; the table does not exist yet."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def command(self, statement: str):
        self.commands.append(statement)
        return 0 if statement.startswith("EXISTS") else None


def test_the_sink_creates_the_cluster_tables_when_given_a_cluster():
    client = RecordingClient()
    ClickHouseAnalyticsSink(client, "wotr", cluster="prod").start()
    assert client.commands == ["EXISTS TABLE wotr.ingested_data", *_ddl("wotr", "prod")]
    single = RecordingClient()
    ClickHouseAnalyticsSink(single, "wotr").start()
    assert single.commands == ["EXISTS TABLE wotr.ingested_data", *SINGLE_NODE]


def test_the_cluster_setting_reaches_the_sink_through_the_container():
    settings = Settings.from_env({**LOCAL, "CLICKHOUSE_HOST": "ch1", "CLICKHOUSE_CLUSTER": "prod"})
    assert settings.clickhouse.cluster == "prod"
    container = build_container(settings, role="consume")
    client = RecordingClient()
    container.clickhouse.override(providers.Object(client))
    container.clickhouse_sink().start()
    assert client.commands[1:] == _ddl("wotr", "prod")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLICKHOUSE_HOST": "ch1", "CLICKHOUSE_CLUSTER": "prod; DROP"}, "plain identifier"),
        ({"CLICKHOUSE_CLUSTER": "prod"}, "not the in-process engine"),  # the default chdb:// DSN
    ],
)
def test_a_cluster_the_ddl_cannot_use_names_its_variable(env, message):
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env({**LOCAL, **env})
    assert info.value.variable == "CLICKHOUSE_CLUSTER"


def test_the_engine_parses_every_generated_statement():
    """ClickHouse's own parser (formatQuery, in the chdb engine, in a process of its own:
    the engine allows one data path per process) accepts both DDL variants."""
    pytest.importorskip("chdb")
    statements = [*_ddl("wotr"), *_ddl("wotr", "prod")]
    code = (
        "import json, sys, chdb.session\n"
        "s = chdb.session.Session()\n"
        "out = []\n"
        "for q in json.loads(sys.stdin.read()):\n"
        "    literal = q.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))\n"
        "    out.append(str(s.query('SELECT formatQuery(' + chr(39) + literal + chr(39) + ')', 'TSVRaw')).strip())\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps(statements), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    formatted = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(formatted) == 5
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}'" \
        in formatted[3]
    assert formatted[4].endswith("ENGINE = Distributed(prod, wotr, ingested_data_local, cityHash64(id))")


# -- metadata retention --------------------------------------------------------------------

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _row(event_id: str, age: timedelta, now: datetime = NOW) -> EventMetadata:
    at = now - age
    return EventMetadata(id=event_id, object_key=f"raw/dt={at:%Y-%m-%d}/{event_id}.json", size=1,
                         checksum="00" * 32, received_at=at)


def _fill(repo, old_published: int, old_stored: int, recent: int, now: datetime = NOW) -> None:
    old = [_row(f"old-{i}", timedelta(days=40), now) for i in range(old_published)]
    repo.record(old + [_row(f"pending-{i}", timedelta(days=40), now) for i in range(old_stored)]
                + [_row(f"new-{i}", timedelta(days=1), now) for i in range(recent)])
    repo.mark_published([r.id for r in old] + [f"new-{i}" for i in range(recent)], now)


def test_prune_deletes_old_published_rows_in_batches_and_keeps_stored_ones():
    repo = InMemoryMetadataRepo()
    _fill(repo, old_published=25, old_stored=3, recent=4)
    said: list[str] = []
    summary = prune(repo, timedelta(days=30), batch_size=10, now=NOW, say=said.append)
    assert (summary.deleted, summary.batches, summary.rows_left, summary.stored_left) == (25, 3, 7, 3)
    assert summary.cutoff == NOW - timedelta(days=30)
    assert len(said) == 3 and str(summary).startswith("pruned 25 published rows received before 2026-05-02T00:00:00Z")
    assert repo.find(["old-0", "pending-0", "new-0"]).keys() == {"pending-0", "new-0"}
    assert prune(repo, timedelta(days=30), batch_size=10, now=NOW).deleted == 0


def test_wotr_metadata_prune_on_the_embedded_profile(tmp_path, monkeypatch, capsys):
    repo = SqliteMetadataRepo(tmp_path / "metadata.db")
    repo.start()
    _fill(repo, old_published=7, old_stored=2, recent=3, now=datetime.now(UTC))
    repo.close()
    for name in [n for n in os.environ if n.startswith(("WOTR_", "CLICKHOUSE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(tmp_path))
    assert metadata_main(["prune", "--older-than", "30", "--batch-size", "3", "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("pruned 7 published rows") and "in 3 batches" in out[0]
    assert "5 rows left, 2 of them stored" in out[0]
    repo.start()
    assert repo.count() == 5 and repo.count(EventStatus.STORED) == 2
    repo.close()


@pytest.mark.parametrize("args", [["prune"], ["prune", "--older-than", "0"], ["prune", "--older-than", "-3"],
                                  ["prune", "--older-than", "7", "--batch-size", "0"]])
def test_prune_refuses_a_missing_or_senseless_bound(args, capsys):
    with pytest.raises(SystemExit) as info:
        metadata_main(args)
    assert info.value.code == 2


def test_prune_refuses_the_memory_profile(monkeypatch, capsys):
    monkeypatch.setenv("WOTR_PROFILE", "memory")
    assert metadata_main(["prune", "--older-than", "1"]) == 2
    assert "WOTR_PROFILE" in capsys.readouterr().err
