"""The SparkSession of the ETL: local mode on loopback, quiet, UTC, s3a when needed.

One session per process (Spark allows one context per JVM): `spark_session` reuses the
active one, so tests share a single session and the CLI pays the start-up once.

This is also the one place that knows how Hadoop names a store's location: the object
store says `s3://bucket/...` and Hadoop's S3 connector reads `s3a://bucket/...`
(`hadoop_url`); `etl_session` decides from that URL whether the session needs the s3a
jars and settings. The container builds the session with it, as a resource.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from wotr_adapters.connections import S3Connection

__all__ = ["S3A", "etl_session", "hadoop_url", "s3a_conf", "session_conf", "spark_session"]

S3A = "s3a://"


def hadoop_url(location: str) -> str:
    """A store's location (`ObjectStore.location`) as Hadoop addresses it: `s3://` is
    read through the s3a connector (`s3a://`); `file://` and the rest stay as they are."""
    return S3A + location.removeprefix("s3://") if location.startswith("s3://") else location


def s3a_conf(s3: S3Connection) -> dict[str, str]:
    """Hadoop settings for an S3-compatible server on a plain endpoint (path-style URLs)."""
    return {
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint": s3.url,
        "fs.s3a.endpoint.region": s3.region,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(s3.secure).lower(),
        "fs.s3a.access.key": s3.access_key,
        "fs.s3a.secret.key": s3.secret_key,
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        # Not every S3 server supports the ETag/version preconditions s3a checks by default.
        "fs.s3a.change.detection.mode": "none",
        "fs.s3a.attempts.maximum": "3",
        "fs.s3a.retry.limit": "3",
    }


def _log_config() -> str:
    return str(resources.files(__package__).joinpath("log4j2.properties"))


def session_conf(s3: S3Connection | None = None, jars: Sequence[Path] = ()) -> dict[str, str]:
    """Every Spark setting of the job; `s3` and `jars` only for s3a (the local profile)."""
    conf = {
        "spark.master": "local[2]",
        "spark.app.name": "wotr-etl",
        "spark.driver.memory": "1g",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{_log_config()}",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Raw objects are small: pack many into one task instead of one task per 4 MB.
        "spark.sql.files.openCostInBytes": str(64 * 1024),
        # Each run lists its prefixes once; a session-wide cache of 100k file statuses
        # would only hold driver memory (and warn when it overflows).
        "spark.sql.hive.filesourcePartitionFileCacheSize": "0",
    }
    if jars:
        conf["spark.jars"] = ",".join(str(j) for j in jars)
    if s3 is not None:
        conf.update({f"spark.hadoop.{k}": v for k, v in s3a_conf(s3).items()})
    return conf


def _ensure_java() -> None:
    """Point JAVA_HOME at a JDK 17+ under /usr/lib/jvm when no `java` is reachable."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    for home in sorted(Path("/usr/lib/jvm").glob("*"), reverse=True):
        if (home / "bin" / "java").exists() and any(v in home.name for v in ("17", "21", "25")):
            os.environ["JAVA_HOME"] = str(home)
            return


def spark_session(
    s3: S3Connection | None = None,
    jars: Sequence[Path] = (),
    *,
    say: Callable[[str], None] = lambda _m: None,
) -> Any:
    """The process's SparkSession, created with `session_conf` unless one is active.

    A reused session gets the s3a settings applied to its Hadoop configuration, which
    works only if it was started with the jars (the CLI always starts its own).
    """
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        if s3 is not None:
            hadoop = active.sparkContext._jsc.hadoopConfiguration()
            for key, value in s3a_conf(s3).items():
                hadoop.set(key, value)
        return active
    _ensure_java()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark warns about the host name
    say("starting Spark (local[2])")
    builder = SparkSession.builder
    for key, value in session_conf(s3, jars).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def etl_session(
    root: str,
    s3: S3Connection,
    jars_dir: Path | None = None,
    *,
    say: Callable[[str], None] = lambda _m: None,
) -> Iterator[Any]:
    """The ETL's SparkSession for data under `root` (a Hadoop URL), as a generator for a
    `Resource`: started on first use, stopped when the resource is shut down (only if
    it started it; a session already active in the process is left running).

    The s3a jars (resolved with Maven once, `jars.ensure_jars`) and the s3a settings
    from `s3` are used only when `root` is on S3; `JarResolutionError` when they cannot
    be resolved.
    """
    from pyspark.sql import SparkSession

    from .jars import ensure_jars

    on_s3 = root.startswith(S3A)
    jars = ensure_jars(jars_dir, say=say) if on_s3 else []
    owned = SparkSession.getActiveSession() is None
    started = time.monotonic()
    spark = spark_session(s3 if on_s3 else None, jars, say=say)
    if owned:
        say(f"Spark ready in {time.monotonic() - started:.1f}s")
    try:
        yield spark
    finally:
        if owned:
            spark.stop()
