"""The ETL on a real standalone Spark cluster on loopback: a master and two workers started
from the Spark distribution PySpark installs (`<pyspark>/bin/spark-class`), raw objects in a
real S3 bucket and their metadata in a real PostgreSQL schema (as in test_etl_s3.py).

The same dates are processed three times, one after the other: by `wotr etl` in local mode
(`local[2]`, the reference), by the unchanged `wotr etl` with WOTR_SPARK_MASTER pointing at
the cluster, and by `spark-submit` with the entry point `wotr_apps/etl/submit.py` and the
sources zipped for `--py-files`. Each run replaces the dates' partitions, and the Parquet
rows read back with pyarrow must be identical every time (curated rows whole; rejected
rows but for their run id and time).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import msgspec
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyspark
import pytest
from psycopg import sql

from wotr_adapters.connections import PostgresConnection, S3Connection
from wotr_adapters.memory import InMemoryEventBus
from wotr_adapters.minio import MinioObjectStore, minio_client
from wotr_adapters.postgres import PostgresMetadataRepo, postgres_pool
from wotr_apps.etl import submit
from wotr_apps.etl.jars import ensure_jars
from wotr_domain.codec import decode_event, encode
from wotr_domain.models import IngestRequest
from wotr_domain.services import IngestService

ROOT = Path(__file__).resolve().parents[2]
SPARK_HOME = Path(pyspark.__file__).parent
D1, D2 = date(2026, 4, 1), date(2026, 4, 2)
WORKERS = 2
# Passed through WOTR_SPARK_CONF (and spark-submit's --conf): executors of a run this small
# live for seconds, so the quick JIT alone and one GC thread suit them.
EXECUTOR_JAVA = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _die_with_this_process() -> None:
    """In the child before exec: SIGTERM when the test process dies, even if it is killed
    before the fixture's teardown could stop the cluster (Linux; elsewhere teardown only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A standalone master and its workers, each a JVM in its own process group."""

    url: str
    ui: str
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as answer:
            return json.load(answer)

    def apps(self) -> list[dict]:
        """The applications the master has seen, running or finished."""
        state = self.state()
        return [*state.get("activeapps", []), *state.get("completedapps", [])]

    def executors(self, app_id: str) -> int:
        """Executors of an application that the workers launched (their work directories)."""
        return len(list(self.logs.glob(f"work*/{app_id}/*/stderr")))

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every worker is registered and alive; the logs' tails when it does not happen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p.args[-1] for p in self.processes if p.poll() is not None]
            assert not dead, f"a cluster process exited early\n{self.tails()}"
            try:
                if self.state().get("aliveworkers") == WORKERS:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the cluster did not come up within {timeout:.0f}s\n{self.tails()}")

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                         for log in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        for p in self.processes:  # the group holds the JVM and, for a worker, its executors
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and two workers (1 core, 1 GiB each) on 127.0.0.1, free ports, stopped at the end.

    Started without waiting: the JVMs come up while the test prepares its data and runs
    the local reference (`Cluster.wait_ready` before using it)."""
    home = tmp_path_factory.mktemp("spark-cluster")
    port, ui_port = _free_port(), _free_port()
    cluster = Cluster(url=f"spark://127.0.0.1:{port}", ui=f"http://127.0.0.1:{ui_port}", logs=home)
    env = os.environ | {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(home), "SPARK_HOME": str(SPARK_HOME)}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    commands = {
        "master": [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                   "--port", str(port), "--webui-port", str(ui_port)],
        **{f"worker{i}": [spark_class, "org.apache.spark.deploy.worker.Worker", cluster.url, "--host", "127.0.0.1",
                          "--cores", "1", "--memory", "1g", "--webui-port", str(_free_port()),
                          "--work-dir", str(home / f"work{i}")]
           for i in range(1, WORKERS + 1)},
    }
    try:
        for name, command in commands.items():
            with open(home / f"{name}.log", "wb") as log:
                cluster.processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                                          preexec_fn=_die_with_this_process))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def s3a_jars() -> list[Path]:
    return ensure_jars()


@pytest.fixture
def bucket(s3_connection: S3Connection) -> Iterator[MinioObjectStore]:
    client = minio_client(s3_connection)
    store = MinioObjectStore(client, f"wotr-cluster-{uuid.uuid4().hex[:12]}")
    store.start()
    yield store
    for item in client.list_objects(store.bucket, recursive=True):
        client.remove_object(store.bucket, item.object_name)
    client.remove_bucket(store.bucket)
    store.close()


@pytest.fixture
def metadata(postgres_connection: PostgresConnection) -> Iterator[PostgresMetadataRepo]:
    repo = PostgresMetadataRepo(partial(postgres_pool, postgres_connection, max_size=2),
                                schema=f"etl_{uuid.uuid4().hex[:12]}")
    repo.start()
    yield repo
    repo.close()
    with psycopg.connect(postgres_connection.conninfo, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(repo.schema)))


def _env(conn: S3Connection, bucket: str, pg: PostgresConnection, schema: str, tmp: Path, **spark: str) -> dict:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "PYSPARK_"))}
    return inherited | {
        "WOTR_PROFILE": "local",
        "WOTR_DATA_DIR": str(tmp),
        "MINIO_ENDPOINT": conn.endpoint,
        "MINIO_ACCESS_KEY": conn.access_key,
        "MINIO_SECRET_KEY": conn.secret_key,
        "MINIO_BUCKET": bucket,
        "MINIO_REGION": conn.region,
        "MINIO_SECURE": str(conn.secure).lower(),
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": pg.user,
        "POSTGRES_PASSWORD": pg.password,
        "POSTGRES_DB": pg.dbname,
        "POSTGRES_SCHEMA": schema,
        **spark,
    }


def _run(command: list[str], env: dict) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          check=False, cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def _table(conn: S3Connection, path: str) -> pa.Table:
    s3 = pafs.S3FileSystem(access_key=conn.access_key, secret_key=conn.secret_key, region=conn.region,
                           endpoint_override=conn.endpoint, scheme="https" if conn.secure else "http")
    partitioning = ds.partitioning(pa.schema([("dt", pa.date32())]), flavor="hive")
    return ds.dataset(path, format="parquet", filesystem=s3, partitioning=partitioning).to_table()


def _output(conn: S3Connection, bucket: MinioObjectStore) -> dict:
    """What a run leaves in the bucket, comparable across runs."""
    curated = _table(conn, f"{bucket.bucket}/curated/events")
    rejected = _table(conn, f"{bucket.bucket}/curated/rejected").drop_columns(["run_id", "rejected_at"])
    return {
        "curated schema": curated.schema,
        "curated": sorted(curated.to_pylist(), key=lambda r: r["id"]),
        "rejected schema": rejected.schema,
        "rejected": sorted(rejected.to_pylist(), key=lambda r: (r["object_key"], r["raw"])),
        "files": sorted(k.rsplit("/", 1)[0] for k in bucket.list("curated/") if k.endswith(".parquet")),
    }


def _archive(bucket: MinioObjectStore, metadata: PostgresMetadataRepo) -> int:
    """Raw objects and metadata as the ingest service writes them, plus what must not be
    curated: an orphan object and line, an overwritten object (rejected), a deleted one."""
    now = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    service = IngestService(bucket, metadata, InMemoryEventBus(), clock=lambda: now)
    keys = []
    for i in range(12):
        now = datetime.combine(D1 if i % 2 else D2, datetime.min.time(), UTC) + timedelta(hours=i, microseconds=i)
        request = IngestRequest(payload={"i": i, "text": "é ✓"}, source="it", type="etl")
        keys.append(service.ingest(request).object_key)
    now = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
    batch = service.ingest_batch([IngestRequest(payload={"b": i}, source="it") for i in range(5)])
    (batch_key,) = {r.object_key for r in batch}
    bucket.put(f"raw/dt={D2.isoformat()}/torn.json", b'{"id": "t')
    stray = encode(decode_event(bucket.get(batch_key).split(b"\n")[0])).replace(b'"b":0', b'"b":9')
    bucket.put(batch_key, bucket.get(batch_key) + stray + b"\n")
    bucket.delete(keys[0])
    forged = msgspec.structs.replace(decode_event(bucket.get(keys[1])), payload={"i": 99})
    bucket.put(keys[1], encode(forged))
    return 12 - 2 + 5  # curated: the singles but the deleted and the forged one, and the batch


@pytest.mark.timeout(600)
def test_the_etl_on_a_standalone_cluster_writes_what_local_mode_writes(
        spark_cluster, s3_connection, postgres_connection, bucket, metadata, s3a_jars, tmp_path):
    started = time.monotonic()
    expected_rows = _archive(bucket, metadata)
    env = partial(_env, s3_connection, bucket.bucket, postgres_connection, metadata.schema, tmp_path)
    etl = [sys.executable, "-m", "wotr_apps.etl"]

    local = _run(etl, env(WOTR_SPARK_MASTER="local[2]"))
    assert "starting Spark (local[2])" in local.stdout, local.stdout
    assert f"{expected_rows} written, 1 rejected, 0 duplicate(s), 2 orphan(s), 1 missing" in local.stdout, local.stdout
    reference = _output(s3_connection, bucket)
    assert len(reference["curated"]) == expected_rows and len(reference["rejected"]) == 1
    assert reference["files"] == [f"curated/events/dt={D1}", f"curated/events/dt={D2}", f"curated/rejected/dt={D1}"]
    local_seconds = time.monotonic() - started

    spark_cluster.wait_ready()
    t0 = time.monotonic()
    on_cluster = _run(etl, env(WOTR_SPARK_MASTER=spark_cluster.url, WOTR_SPARK_EXECUTOR_MEMORY="512m",
                               WOTR_SPARK_CONF=f"spark.executor.extraJavaOptions={EXECUTOR_JAVA}"))
    cluster_seconds = time.monotonic() - t0
    assert f"starting Spark ({spark_cluster.url})" in on_cluster.stdout, on_cluster.stdout
    assert f"{expected_rows} written, 1 rejected" in on_cluster.stdout, on_cluster.stdout
    assert _output(s3_connection, bucket) == reference
    (app,) = spark_cluster.apps()
    assert app["name"] == "wotr-etl" and app["memoryperexecutor"] == 512
    assert spark_cluster.executors(app["id"]) == WORKERS, "an executor on each worker"
    # The s3a jars are on the workers' class path: nothing was copied into the work directories.
    assert sum(f.stat().st_size for f in spark_cluster.logs.glob(f"work*/{app['id']}/**/*.jar")) == 0
    launched = [line for log in spark_cluster.logs.glob("worker*.log")
                for line in log.read_text(errors="replace").splitlines() if "Launch command" in line]
    assert len(launched) == WORKERS  # the executors' Java options came from WOTR_SPARK_CONF:
    assert all(f'"{option}"' in line for line in launched for option in EXECUTOR_JAVA.split())

    package = submit.package(tmp_path / "dist" / "wotr-etl.zip")
    classpath = _run([sys.executable, "-m", "wotr_apps.etl.submit", "--classpath"], env()).stdout.strip()
    assert classpath == ":".join(str(j) for j in s3a_jars)
    t0 = time.monotonic()
    submitted = _run([str(SPARK_HOME / "bin" / "spark-submit"), "--master", spark_cluster.url,
                      "--conf", f"spark.pyspark.python={sys.executable}", "--conf", "spark.executor.memory=512m",
                      "--conf", f"spark.executor.extraJavaOptions={EXECUTOR_JAVA}",
                      "--driver-class-path", classpath, "--py-files", str(package),
                      str(ROOT / "src" / "wotr_apps" / "etl" / "submit.py"), "--since", D1.isoformat()],
                     env(WOTR_SPARK_MASTER="local[1]"))  # the command line's --master wins
    submit_seconds = time.monotonic() - t0
    assert f"starting Spark ({spark_cluster.url}, settings of spark-submit first)" in submitted.stdout, submitted.stdout
    assert f"{expected_rows} written, 1 rejected" in submitted.stdout, submitted.stdout
    assert _output(s3_connection, bucket) == reference
    (second,) = [a for a in spark_cluster.apps() if a["id"] != app["id"]]
    assert second["name"] == "submit.py"  # spark-submit names it; its settings win
    assert spark_cluster.executors(second["id"]) == WORKERS
    # The executors' class path was filled in from the settings, for the command line's master.
    assert sum(f.stat().st_size for f in spark_cluster.logs.glob(f"work*/{second['id']}/**/*.jar")) == 0
    print(f"\nlocal[2] run {local_seconds:.1f}s (with the data), cluster run {cluster_seconds:.1f}s, "
          f"spark-submit run {submit_seconds:.1f}s, whole test {time.monotonic() - started:.1f}s")
    for done in (local, on_cluster, submitted):
        print(" | ".join(line for line in done.stdout.splitlines() if line.startswith(("Spark ready", "done in"))))
