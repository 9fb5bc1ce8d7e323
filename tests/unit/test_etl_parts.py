"""The ETL's parts that need no Spark: date selection, layout, run history, jar cache,
session settings, the schemas derived from the domain model, the migration of curated
Parquet written before, the container's ETL providers and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import msgspec
import pytest

from wotr_adapters.connections import S3Connection
from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryObjectStore
from wotr_apps.etl import jars
from wotr_apps.etl.cli import main as etl_main
from wotr_adapters.minio import MinioObjectStore, minio_client
from wotr_apps.container import build_container
from wotr_apps.etl.layout import Layout, Selection, available_dates, select_dates
from wotr_apps.etl import submit
from wotr_apps.etl.session import SparkOptions, hadoop_url, session_conf
from wotr_apps.run_history import RunHistory, RunRecord, render_table
from wotr_apps.settings import Settings
from wotr_domain.errors import ConfigError, NotFound
from wotr_domain.models import ArchivedEvent, Event, EventMetadata

D = date.fromisoformat


# -- dates -----------------------------------------------------------------------------


def test_available_dates_counts_raw_objects_per_date_and_ignores_the_rest(tmp_path: Path):
    store = FilesystemObjectStore(tmp_path)
    for key in ["raw/dt=2026-11-24/a.json", "raw/dt=2026-11-24/b.json", "raw/dt=2026-11-26/c.json",
                "raw/dt=2026-11-26/_hidden.json", "raw/dt=2026-11-26/.also-hidden", "raw/dt=2026-13-40/d.json",
                "raw/dt=2026-11-25/nested/e.json", "raw/other/f.json", "curated/events/dt=2026-11-24/p.parquet"]:
        store.put(key, b"{}")

    assert available_dates(store) == {D("2026-11-24"): 2, D("2026-11-26"): 1}
    assert available_dates(store, D("2026-11-26")) == {D("2026-11-26"): 1}
    assert available_dates(store, D("2026-11-25")) == {}


def test_date_selection():
    available = {D("2026-11-01"): 5, D("2026-11-20"): 1, D("2026-11-24"): 2, D("2026-12-31"): 1}
    today = D("2026-11-24")
    assert select_dates(available, Selection(), today) == sorted(available)
    assert select_dates(available, Selection(date=D("2026-11-20")), today) == [D("2026-11-20")]
    assert select_dates(available, Selection(date=D("2026-11-21")), today) == []
    assert select_dates(available, Selection(since=D("2026-11-02")), today) == [D("2026-11-20"), D("2026-11-24")]
    assert select_dates(available, Selection(since=D("2026-11-25")), today) == []
    with pytest.raises(ValueError):
        Selection(date=today, since=today)


def test_the_layout_is_where_the_object_store_is(tmp_path: Path):
    on_disk = Layout.for_store(FilesystemObjectStore(tmp_path / "my data" / "objects" / "raw-data"))
    assert on_disk.root == f"file://{tmp_path}/my data/objects/raw-data"  # as it is: Hadoop does not decode
    assert on_disk.raw(D("2026-11-24")) == f"file://{tmp_path}/my data/objects/raw-data/raw/dt=2026-11-24"
    bucket = Layout.for_store(MinioObjectStore(minio_client(S3Connection(endpoint="127.0.0.1:1")), "archive"))
    assert (bucket.curated, bucket.rejected) == ("s3a://archive/curated/events", "s3a://archive/curated/rejected")
    with pytest.raises(NotFound, match="in-memory"):
        Layout.for_store(InMemoryObjectStore())
    assert hadoop_url("s3://b/k") == "s3a://b/k" and hadoop_url("file:///d/s3://x") == "file:///d/s3://x"


def test_the_container_gives_the_etl_its_layout_and_refuses_the_memory_profile(tmp_path: Path):
    container = build_container(Settings(profile="embedded", data_dir=tmp_path / "data"), role="etl")
    try:
        assert container.etl_layout().root == f"file://{tmp_path}/data/objects/raw-data"
    finally:
        container.shutdown_resources()
    memory = build_container(Settings(profile="memory"), role="etl")
    for part in (memory.etl_layout, memory.etl_job, memory.etl_spark):
        with pytest.raises(ConfigError, match="WOTR_PROFILE"):
            part()
    memory.shutdown_resources()


# -- history ---------------------------------------------------------------------------


def _run(run_id: str, **fields) -> RunRecord:
    fields = {"status": "succeeded", "selection": "all dates"} | fields
    return RunRecord(run_id=run_id, started_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC), **fields)


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
def test_history_keeps_the_last_record_of_each_run_in_start_order(kind: str, tmp_path: Path):
    store = InMemoryObjectStore() if kind == "memory" else FilesystemObjectStore(tmp_path)
    history = RunHistory(store)
    history.record(_run("01a0-0001", status="running"))
    history.record(_run("01a0-0002", dates=["2026-11-24"], rows_read=10, rows_written=8, rows_rejected=1, orphans=1,
                        missing=3))
    history.record(_run("01a0-0001", dates=["2026-11-23"], rows_read=3, rows_written=3))
    store.put("curated/_runs/garbage.json", b"not a record")
    store.put("curated/_runs/01a0-0000.json", b'{"run_id": "01a0-0000", "started_at": "2026-11-20T10:00:00Z",'
              b' "status": "succeeded", "selection": "all dates", "rows_read": 5}')  # written before orphans/missing

    runs = history.runs()
    assert [(r.run_id, r.status, r.rows_read) for r in runs] == [("01a0-0000", "succeeded", 5),
                                                                 ("01a0-0001", "succeeded", 3),
                                                                 ("01a0-0002", "succeeded", 10)]
    assert (runs[0].orphans, runs[0].missing) == (0, 0)
    assert (runs[2].orphans, runs[2].missing) == (1, 3)
    assert [r.run_id for r in history.runs(limit=2)] == ["01a0-0002"]  # the garbage key sorts last
    assert RunHistory(InMemoryObjectStore()).runs() == []


def test_history_table():
    assert render_table([]) == "no ETL runs recorded yet"
    lines = render_table([
        _run("r1", dates=["2026-11-24"], rows_read=1234, rows_written=1200, rows_rejected=30, orphans=4, missing=2,
             duration_seconds=12.34),
        _run("r2", status="failed", dates=["2026-11-20", "2026-11-21", "2026-11-24"], error="Boom: disk full"),
    ]).splitlines()
    assert lines[0].split() == ["RUN", "STARTED", "(UTC)", "STATUS", "DATES", "READ", "WRITTEN", "REJECTED", "DUPL",
                                "ORPHANS", "MISSING", "DURATION"]
    assert lines[1].split() == ["r1", "2026-11-24", "10:00:00", "succeeded", "2026-11-24", "1,234", "1,200", "30", "0",
                                "4", "2", "12.3s"]
    assert "2026-11-20..2026-11-24 (3)" in lines[2] and "failed" in lines[2]
    assert lines[3] == "r2: Boom: disk full"


# -- metadata --------------------------------------------------------------------------


def test_a_days_archive_entries_are_grouped_by_object_with_id_line_and_checksum():
    from wotr_apps.etl.transform import metadata_rows  # pyspark is imported, no session is started

    day = D("2026-11-24")
    entries = [ArchivedEvent(k, n, i, c)
               for i, k, n, c in [("b1", "raw/dt=2026-11-24/batch-b.ndjson", 1, "cb1"),
                                  ("a", "raw/dt=2026-11-24/a.json", None, "ca"),
                                  ("b0", "raw/dt=2026-11-24/batch-b.ndjson", 0, "cb0")]]
    assert metadata_rows((day, e) for e in entries) == [  # in no given order: grouped as they come
        ("raw/dt=2026-11-24/batch-b.ndjson", day, [("b1", 1, "cb1"), ("b0", 0, "cb0")]),
        ("raw/dt=2026-11-24/a.json", day, [("a", None, "ca")]),
    ]
    late = msgspec.structs.replace(entries[2], id="b2", line=2)  # another day's row naming the same object
    assert metadata_rows([(day, entries[2]), (D("2026-11-25"), late)]) == [
        ("raw/dt=2026-11-24/batch-b.ndjson", day, [("b0", 0, "cb0"), ("b2", 2, "cb0")])]
    assert metadata_rows([]) == []


# -- schemas derived from the domain model -------------------------------------------


def test_the_schemas_are_derived_from_the_event_model():
    from pyspark.sql.types import BooleanType, LongType, StringType, TimestampType

    from wotr_apps.etl.schema import CORRUPT, CURATED_SCHEMA, RAW_SCHEMA, REQUIRED_FIELDS, curated_schema, raw_schema

    fields = [f.name for f in msgspec.structs.fields(Event)]
    assert RAW_SCHEMA.names == [*fields, CORRUPT]
    assert {f.dataType for f in RAW_SCHEMA.fields} == {StringType()}  # nothing fails the parse
    assert CURATED_SCHEMA.names == [{"timestamp": "event_time"}.get(n, n) for n in fields] + ["object_key", "dt"]
    columns = {f.name: (f.dataType, f.nullable) for f in CURATED_SCHEMA.fields}
    assert columns["id"] == (StringType(), False)  # `id`, as in PostgreSQL and ClickHouse
    assert columns["received_at"] == (TimestampType(), False)
    assert columns["payload"] == (StringType(), False)  # its JSON text
    assert columns["event_time"] == (TimestampType(), True)  # the client's `timestamp`, as in AnalyticsRow
    assert (columns["source"], columns["type"]) == ((StringType(), True),) * 2
    assert REQUIRED_FIELDS == ("id", "received_at", "payload")

    class Wider(Event, frozen=True, kw_only=True):  # a field added to the event ...
        channel: str | None = None
        attempts: int = 0
        consented: bool | None = None
        seen_at: datetime | None = None
        tags: list[str] = []

    added = ["channel", "attempts", "consented", "seen_at", "tags"]
    assert raw_schema(Wider).names == [*fields, *added, CORRUPT]  # ... is parsed ...
    wider = curated_schema(Wider)  # ... and curated, typed from its annotation
    assert wider.names == [*CURATED_SCHEMA.names[:-2], *added, "object_key", "dt"]
    assert [(f.dataType, f.nullable) for f in wider.fields if f.name in added] == [
        (StringType(), True), (LongType(), True), (BooleanType(), True), (TimestampType(), True), (StringType(), True)]

    class Nested(Event, frozen=True, kw_only=True):
        parent: EventMetadata | None = None

    with pytest.raises(TypeError, match="Nested.parent"):
        curated_schema(Nested)


# -- migration of curated Parquet written before ---------------------------------------


def _parquet(table) -> bytes:
    import io

    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _old_table(ids: list[str]):
    """Curated rows as the ETL wrote them with `event_id`, with Spark's copy of the schema."""
    import pyarrow as pa

    spark_schema = {"type": "struct", "fields": [
        {"name": n, "type": t, "nullable": True, "metadata": {}}
        for n, t in (("event_id", "string"), ("received_at", "timestamp"), ("payload", "string"))]}
    at = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    table = pa.table({"event_id": ids, "received_at": pa.array([at] * len(ids), pa.timestamp("us", tz="UTC")),
                      "payload": ['{"n":1}'] * len(ids)})
    return table.replace_schema_metadata({"org.apache.spark.sql.parquet.row.metadata": json.dumps(spark_schema)})


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
def test_curated_parquet_with_event_id_is_rewritten_with_id_once(kind: str, tmp_path: Path):
    import io

    import pyarrow.parquet as pq

    from wotr_apps.etl.migrate import SCHEMA_VERSION, migrate_curated, schema_version

    store = InMemoryObjectStore() if kind == "memory" else FilesystemObjectStore(tmp_path)
    store.start()
    old, new = "curated/events/dt=2026-11-24/part-0.parquet", "curated/events/dt=2026-11-25/part-0.parquet"
    store.put(old, _parquet(_old_table(["a", "b"])))
    store.put("curated/events/dt=2026-11-24/.part-0.parquet.crc", b"crc of the old bytes")
    store.put(new, _parquet(_old_table(["c"]).rename_columns(["id", "received_at", "payload"])))
    untouched = {
        "curated/events/_temporary/0/part-9.parquet": _parquet(_old_table(["t"])),  # hidden, as Spark skips it
        "curated/events/dt=2026-11-26/part-0.parquet": b"PAR1 torn",  # not readable: left alone
        "curated/rejected/dt=2026-11-24/part-0.parquet": _parquet(_old_table(["r"])),  # not curated events
    }
    for key, data in untouched.items():
        store.put(key, data)
    new_bytes = store.get(new)
    said: list[str] = []
    assert schema_version(store) == 1

    assert migrate_curated(store, say=said.append) == 1

    table = pq.read_table(io.BytesIO(store.get(old)))
    assert table.column_names == ["id", "received_at", "payload"]
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.schema.field("received_at").type == _old_table([]).schema.field("received_at").type
    spark_schema = json.loads(table.schema.metadata[b"org.apache.spark.sql.parquet.row.metadata"])
    assert [f["name"] for f in spark_schema["fields"]] == ["id", "received_at", "payload"]
    assert not store.exists("curated/events/dt=2026-11-24/.part-0.parquet.crc")
    assert store.get(new) == new_bytes
    assert {k: store.get(k) for k in untouched} == untouched
    assert schema_version(store) == SCHEMA_VERSION == 2 and store.get("curated/_schema") == b"2\n"
    assert said == ["curated schema 1 -> 2: 1 Parquet file(s) rewritten (event_id -> id)"]

    migrated = store.get(old)
    assert migrate_curated(store) == 0  # the marker is current: nothing is read
    store.delete("curated/_schema")
    assert migrate_curated(store) == 0  # without it: every file checked, none left to rewrite
    assert store.get(old) == migrated and schema_version(store) == 2
    store.put("curated/_schema", b"garbage")
    assert schema_version(store) == 1


# -- jars ------------------------------------------------------------------------------


def test_the_generated_pom_lists_hadoop_aws_and_the_sdk_bundle_it_names():
    pom = jars.render_pom()
    assert "<artifactId>hadoop-aws</artifactId><version>3.5.0</version>" in pom
    assert "<groupId>software.amazon.awssdk</groupId><artifactId>bundle</artifactId><version>2.35.4</version>" in pom


def test_the_jar_cache_lives_under_the_stack_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WOTR_STACK_HOME", str(tmp_path / "home"))
    assert jars.jars_dir() == tmp_path / "home" / "cache" / "spark-jars"


def _complete_cache(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"PK")
    marker = {"artifacts": [":".join(a) for a in jars.ARTIFACTS], "jars": names}
    (folder / jars.MARKER).write_text(json.dumps(marker))


def test_a_complete_jar_cache_is_reused_without_maven(tmp_path: Path, monkeypatch):
    folder = tmp_path / "spark-jars"
    _complete_cache(folder, ["hadoop-aws-3.5.0.jar", "bundle-2.35.4.jar"])
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no mvn: any resolution would fail

    assert jars.ensure_jars(folder) == [folder / "hadoop-aws-3.5.0.jar", folder / "bundle-2.35.4.jar"]


def test_an_incomplete_or_outdated_jar_cache_is_resolved_again(tmp_path: Path, monkeypatch):
    folder = tmp_path / "spark-jars"
    _complete_cache(folder, ["hadoop-aws-3.5.0.jar", "bundle-2.35.4.jar"])
    assert jars.cached_jars(folder, (("org.apache.hadoop", "hadoop-aws", "3.4.9"),)) is None
    (folder / "bundle-2.35.4.jar").unlink()
    assert jars.cached_jars(folder) is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(jars.JarResolutionError, match="Maven"):
        jars.ensure_jars(folder)


def test_jars_spark_already_ships_are_recognised():
    shipped = jars.bundled_by_spark()
    assert {"hadoop-client-api", "hadoop-client-runtime", "jackson-databind", "slf4j-api"} <= shipped
    assert "hadoop-aws" not in shipped and "bundle" not in shipped


# -- session settings ------------------------------------------------------------------


def test_session_settings_are_local_loopback_quiet_and_utc():
    conf = session_conf()
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.sources.partitionOverwriteMode"] == "dynamic"
    assert "log4j2.properties" in conf["spark.driver.extraJavaOptions"]
    assert not any(k.startswith("spark.hadoop.fs.s3a") for k in conf) and "spark.jars" not in conf


def test_session_settings_for_s3a_come_from_the_s3_connection():
    s3 = S3Connection(endpoint="127.0.0.1:9100", access_key="ak", secret_key="sk", bucket="b", region="eu-west-1")
    conf = session_conf(s3, [Path("/c/hadoop-aws.jar"), Path("/c/bundle.jar")])
    assert conf["spark.jars"] == "/c/hadoop-aws.jar,/c/bundle.jar"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9100"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert (conf["spark.hadoop.fs.s3a.access.key"], conf["spark.hadoop.fs.s3a.secret.key"]) == ("ak", "sk")


# -- on a cluster: settings, session settings, spark-submit ------------------------------


def test_spark_settings_default_to_local_mode_on_loopback_and_read_their_variables():
    s = Settings.from_env({})
    assert (s.spark_master, s.spark_driver_host, s.spark_executor_memory, s.spark_executor_cores,
            s.spark_ship_jars, s.spark_conf) == ("local[2]", "127.0.0.1", None, None, False, ())
    assert SparkOptions.from_settings(s) == SparkOptions()
    s = Settings.from_env({
        "WOTR_SPARK_MASTER": "spark://10.0.0.5:7077", "WOTR_SPARK_DRIVER_HOST": "etl",
        "WOTR_SPARK_EXECUTOR_MEMORY": "2G", "WOTR_SPARK_EXECUTOR_CORES": "3", "WOTR_SPARK_SHIP_JARS": "true",
        "WOTR_SPARK_CONF": "spark.jars.ivy=/tmp/ivy, spark.executor.extraJavaOptions=-Da=1 -Db=2,"
                           "spark.files=a.txt,b.txt",
    })
    options = SparkOptions.from_settings(s)
    assert (options.master, options.driver_host, options.executor_memory, options.executor_cores,
            options.ship_jars) == ("spark://10.0.0.5:7077", "etl", "2g", 3, True)
    assert dict(options.conf) == {"spark.jars.ivy": "/tmp/ivy", "spark.executor.extraJavaOptions": "-Da=1 -Db=2",
                                  "spark.files": "a.txt,b.txt"}  # a comma starts a pair only before spark.
    for master in ("local", "local[*]", "local[4]", "local[2,3]", "spark://a:7077,b:7077", "yarn",
                   "k8s://https://k:6443"):
        assert Settings.from_env({"WOTR_SPARK_MASTER": master}).spark_master == master


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("WOTR_SPARK_MASTER", "spark://127.0.0.1", "must be local[N], local[*], spark://host:port"),
    ("WOTR_SPARK_MASTER", "mesos://m:5050", "must be local[N]"),
    ("WOTR_SPARK_MASTER", "local[0]", "must be local[N]"),
    ("WOTR_SPARK_DRIVER_HOST", "http://etl", "must be a host name or an IP address (no scheme or port)"),
    ("WOTR_SPARK_DRIVER_HOST", "etl:7078", "must be a host name or an IP address"),
    ("WOTR_SPARK_EXECUTOR_MEMORY", "lots", "must be a size like 512m or 2g, got 'lots'"),
    ("WOTR_SPARK_EXECUTOR_MEMORY", "0g", "must be a size like 512m or 2g"),
    ("WOTR_SPARK_EXECUTOR_CORES", "0", "must be at least 1, got 0"),
    ("WOTR_SPARK_EXECUTOR_CORES", "two", "must be an integer"),
    ("WOTR_SPARK_SHIP_JARS", "maybe", "must be true or false"),
    ("WOTR_SPARK_CONF", "executor.memory=1g", "must be spark.<key>=<value> pairs separated by commas, got "
                                               "'executor.memory=1g'"),
    ("WOTR_SPARK_CONF", "spark.executor.memory", "must be spark.<key>=<value> pairs"),
    ("WOTR_SPARK_CONF", "spark.a=1,spark.b=", "must give every key a value, spark.b has none"),
    ("WOTR_SPARK_CONF", "spark.a=1,spark.a=2", "must name each key once, spark.a is given twice"),
])
def test_invalid_spark_settings_name_their_variable(name, value, problem):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.variable == name
    assert str(info.value).startswith(f"{name} {problem}")


def test_session_settings_on_a_cluster_come_from_the_spark_options():
    options = SparkOptions(master="spark://127.0.0.1:7077", executor_memory="512m", executor_cores=1,
                           python="/venv/bin/python")
    jars = [Path("/c/hadoop-aws.jar"), Path("/c/bundle.jar")]
    conf = session_conf(S3Connection(), jars, options)
    assert conf["spark.master"] == "spark://127.0.0.1:7077"
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.pyspark.python"] == "/venv/bin/python"
    assert (conf["spark.executor.memory"], conf["spark.executor.cores"]) == ("512m", "1")
    # The jars at the same path on every worker: on both class paths, nothing shipped.
    assert conf["spark.driver.extraClassPath"] == conf["spark.executor.extraClassPath"] == (
        "/c/hadoop-aws.jar:/c/bundle.jar")
    assert "spark.jars" not in conf
    shipped = session_conf(S3Connection(), jars, replace(options, ship_jars=True))
    assert shipped["spark.jars"] == "/c/hadoop-aws.jar,/c/bundle.jar" and "spark.executor.extraClassPath" not in shipped
    assert "spark.executor.extraClassPath" not in session_conf(None, [], options)  # no s3a, no jars
    # Executors on other hosts or containers: the driver listens on every interface.
    remote = session_conf(None, [], replace(options, driver_host="etl"))
    assert (remote["spark.driver.host"], remote["spark.driver.bindAddress"]) == ("etl", "0.0.0.0")
    # WOTR_SPARK_CONF comes last and wins.
    extra = session_conf(None, [], replace(options, conf=(("spark.sql.shuffle.partitions", "8"),
                                                          ("spark.pyspark.python", "/usr/bin/python3"))))
    assert (extra["spark.sql.shuffle.partitions"], extra["spark.pyspark.python"]) == ("8", "/usr/bin/python3")


def test_local_mode_keeps_its_settings_and_runs_this_python():
    conf = session_conf(S3Connection(), [Path("/c/a.jar")], SparkOptions(executor_memory="4g"))
    assert conf["spark.jars"] == "/c/a.jar" and "spark.driver.extraClassPath" not in conf
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.master"] == "local[2]" and conf["spark.executor.memory"] == "4g"


def test_the_container_hands_the_settings_spark_options_to_the_session(tmp_path: Path, monkeypatch):
    seen = {}

    def fake_session(root, s3, jars_dir=None, *, options=None, say=print):
        seen.update(root=root, options=options, jars_dir=jars_dir)
        yield "spark"

    monkeypatch.setattr("wotr_apps.etl.session.etl_session", fake_session)
    env = {"WOTR_DATA_DIR": str(tmp_path / "data"), "WOTR_CACHE_DIR": str(tmp_path / "cache"),
           "WOTR_SPARK_MASTER": "spark://127.0.0.1:7077", "WOTR_SPARK_EXECUTOR_CORES": "2"}
    container = build_container(Settings.from_env(env), role="etl")
    try:
        assert container.etl_spark() == "spark"
    finally:
        container.shutdown_resources()
    assert seen["options"] == SparkOptions(master="spark://127.0.0.1:7077", executor_cores=2)
    assert seen["root"] == f"file://{tmp_path}/data/objects/raw-data"
    assert seen["jars_dir"] == tmp_path / "cache" / "spark-jars"


def test_the_spark_submit_package_holds_the_sources_and_imports_from_the_zip(tmp_path: Path):
    zipped = submit.package(tmp_path / "dist" / "wotr-etl.zip")
    with zipfile.ZipFile(zipped) as zf:
        names = set(zf.namelist())
    assert {"wotr_domain/__init__.py", "wotr_adapters/minio.py", "wotr_apps/container.py",
            "wotr_apps/etl/submit.py", "wotr_apps/etl/log4j2.properties"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.split("/")[0] not in submit.PACKAGES]
    assert submit.package(tmp_path / "again.zip").read_bytes() == zipped.read_bytes()  # reproducible
    # What --py-files does: the zip on the path of a Python without site-packages.
    done = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import wotr_apps.etl.submit as m; print(m.__file__)", str(zipped)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{zipped}/wotr_apps/etl/submit.py"


def _submit_file(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`submit.py` run as a file, as spark-submit runs its main file."""
    path = Path(submit.__file__)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "MINIO_", "POSTGRES_"))}
    return subprocess.run([sys.executable, str(path), *args], env=inherited | env, capture_output=True, text=True,
                          timeout=120, cwd=path.parent, check=False)


def test_the_spark_submit_entry_point_runs_as_a_file_with_wotr_etls_arguments(tmp_path: Path):
    done = _submit_file(["--history"], {"WOTR_PROFILE": "embedded", "WOTR_DATA_DIR": str(tmp_path)})
    assert (done.returncode, done.stdout.strip()) == (0, "no ETL runs recorded yet"), done.stderr
    done = _submit_file(["--date", "24/11/2026"], {"WOTR_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "is not a date (YYYY-MM-DD)" in done.stderr
    done = _submit_file([], {"WOTR_PROFILE": "memory"})  # refused before Spark starts
    assert done.returncode == 2 and "WOTR_PROFILE" in done.stderr
    done = _submit_file([], {"WOTR_SPARK_MASTER": "spark://nowhere"})
    assert done.returncode == 2 and "WOTR_SPARK_MASTER must be local[N]" in done.stderr
    done = _submit_file(["--package"], {})
    assert done.returncode == 2 and "usage" in done.stderr


def test_the_classpath_helper_prints_the_cached_jars(tmp_path: Path, monkeypatch, capsys):
    folder = tmp_path / "cache" / "spark-jars"
    folder.mkdir(parents=True)
    names = ["a-1.jar", "b-2.jar"]
    for name in names:
        (folder / name).write_bytes(b"jar")
    (folder / jars.MARKER).write_text(json.dumps({"artifacts": [":".join(a) for a in jars.ARTIFACTS],
                                                 "jars": names}))
    monkeypatch.setenv("WOTR_CACHE_DIR", str(tmp_path / "cache"))
    assert submit.main(["--classpath"]) == 0
    assert capsys.readouterr().out.strip() == f"{folder / 'a-1.jar'}:{folder / 'b-2.jar'}"


def test_make_etl_package_builds_the_zip_the_docs_hand_to_spark_submit():
    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    recipe = makefile.split("\netl-package:", 1)[1].split("\n\n", 1)[0]
    assert "-m wotr_apps.etl.submit --package dist/wotr-etl.zip" in recipe
    docs = (root / "docs" / "etl.md").read_text()
    section = docs.split("\n## On a cluster\n", 1)[1].split("\n## ", 1)[0]
    assert "make etl-package" in section
    command = section.split("$SPARK_HOME/bin/spark-submit", 1)[1].split("```", 1)[0]
    for part in ("--master spark://", "--conf spark.pyspark.python=", "--driver-class-path",
                 "-m wotr_apps.etl.submit --classpath", "--py-files dist/wotr-etl.zip", "src/wotr_apps/etl/submit.py"):
        assert part in command, part


# -- command line ----------------------------------------------------------------------


def test_the_cli_refuses_bad_arguments(capsys):
    for argv in (["--date", "2026-11-24", "--since", "2026-11-01"], ["--date", "24/11/2026"], ["--history", "--bench", "5"]):
        with pytest.raises(SystemExit) as exit_:
            etl_main(argv)
        assert exit_.value.code == 2
    assert "is not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_the_cli_refuses_the_memory_profile(monkeypatch, capsys):
    monkeypatch.setenv("WOTR_PROFILE", "memory")
    assert etl_main([]) == 2
    assert "WOTR_PROFILE" in capsys.readouterr().err


def test_the_cli_history_of_a_fresh_data_dir_is_empty(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(tmp_path))
    assert etl_main(["--history"]) == 0
    assert capsys.readouterr().out.strip() == "no ETL runs recorded yet"


def test_the_cli_reports_an_unreachable_s3_server(monkeypatch, capsys):
    monkeypatch.setenv("WOTR_PROFILE", "local")
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:1")
    assert etl_main(["--history"]) == 3
    assert "object store is unavailable" in capsys.readouterr().err


# -- the benchmark's generator ----------------------------------------------------------


@pytest.mark.parametrize("per_object", [1, 200])
def test_the_benchmark_archives_events_as_the_ingest_service_does_and_tears_one_in_n(per_object: int, tmp_path: Path):
    from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
    from wotr_apps.etl.bench import generate
    from wotr_domain.archive import ChecksumMismatch, event_bytes
    from wotr_domain.codec import decode_event

    store = FilesystemObjectStore(tmp_path / "bucket")
    store.start()
    repo = SqliteMetadataRepo(tmp_path / "metadata.db")
    repo.start()
    try:
        torn = generate(tmp_path / "bucket", repo, 1001, 2, broken_every=100, per_object=per_object)
        rows = list(repo.received_between(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)))
    finally:
        repo.close()

    assert (torn, len(rows), len({m.id for m in rows})) == (10, 1001, 1001)
    by_key: dict[str, list[EventMetadata]] = {}
    for m in rows:
        by_key.setdefault(m.object_key, []).append(m)
    assert set(by_key) == set(store.list("raw/"))
    bad = 0
    for key, metas in by_key.items():
        obj = store.get(key)
        if per_object == 1 or len(metas) == 1:  # a single event: its own object, keyed by its id
            (m,) = metas
            assert (key, m.line) == (f"raw/dt={m.received_at:%Y-%m-%d}/{m.id}.json", None)
        else:  # written together: one NDJSON object, one reception time, lines numbered from 0
            assert key.startswith(f"raw/dt={metas[0].received_at:%Y-%m-%d}/batch-") and key.endswith(".ndjson")
            assert sorted(m.line for m in metas) == list(range(len(metas)))
            assert len({m.received_at for m in metas}) == 1 and obj.endswith(b"\n")
            assert obj.count(b"\n") == len(metas)
        for m in metas:
            try:
                body = event_bytes(m, obj)  # the bytes of exactly the line (or object) match the checksum
            except ChecksumMismatch:
                bad += 1
                continue
            assert (decode_event(body).id, m.size) == (m.id, len(body))
    assert bad == torn
    assert {len(v) for v in by_key.values()} == ({1} if per_object == 1 else {200, 1})  # 5 x 200, then 1 alone
