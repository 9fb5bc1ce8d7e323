"""The SparkSession of the ETL: local mode on loopback by default or a cluster, quiet, UTC,
s3a when needed.

One session per process (Spark allows one context per JVM): `spark_session` reuses the
active one, so tests share a single session and the CLI pays the start-up once.

Where it runs comes from the settings (`SparkOptions.from_settings`: WOTR_SPARK_MASTER,
the driver's address, executor resources, extra conf). On a cluster the executors run the
driver's Python (`spark.pyspark.python`) and find the s3a jars either at the same path on
every worker (class path, nothing copied) or shipped by the driver (`spark.jars`).
Under `spark-submit` (`submit.py`) the command line's settings win and these fill the rest
(`submitted_session`).

This is also the one place that knows how Hadoop names a store's location: the object
store says `s3://bucket/...` and Hadoop's S3 connector reads `s3a://bucket/...`
(`hadoop_url`); `etl_session` decides from that URL whether the session needs the s3a
jars and settings. The container builds the session with it, as a resource.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wotr_adapters.connections import S3Connection

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["S3A", "SparkOptions", "etl_session", "hadoop_url", "s3a_conf", "session_conf", "spark_session",
           "submitted_session"]

S3A = "s3a://"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SparkOptions:
    """Where the ETL's Spark runs: the settings' WOTR_SPARK_* values (defaults: `local[2]`
    on loopback) and the Python the executors run (this interpreter: the venv's)."""

    master: str = "local[2]"
    driver_host: str = "127.0.0.1"
    executor_memory: str | None = None
    executor_cores: int | None = None
    ship_jars: bool = False
    conf: tuple[tuple[str, str], ...] = ()
    python: str = field(default_factory=lambda: sys.executable)

    @classmethod
    def from_settings(cls, settings: Settings) -> SparkOptions:
        return cls(master=settings.spark_master, driver_host=settings.spark_driver_host,
                   executor_memory=settings.spark_executor_memory, executor_cores=settings.spark_executor_cores,
                   ship_jars=settings.spark_ship_jars, conf=settings.spark_conf)

    @property
    def local(self) -> bool:
        """Driver and executors in one JVM (`local`, `local[N]`): nothing leaves the process."""
        return self.master == "local" or self.master.startswith("local[")


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


def session_conf(
    s3: S3Connection | None = None,
    jars: Sequence[Path] = (),
    options: SparkOptions | None = None,
) -> dict[str, str]:
    """Every Spark setting of the job; `s3` and `jars` only for s3a (the local profile),
    `options` (default `local[2]` on loopback) where it runs; their `conf` is applied last.

    The s3a jars reach the driver and, on a cluster, the executors: in local mode and with
    `ship_jars` as `spark.jars` (the driver serves them to each executor: about 660 MB copied
    into every executor's work directory, per run); otherwise on the driver's and the
    executors' class path, which needs them at the same path on every worker (one machine,
    or the ETL image on each worker) and copies nothing.
    """
    options = options or SparkOptions()
    conf = {
        "spark.master": options.master,
        "spark.app.name": "wotr-etl",
        # The driver's heap, and in local mode the executors' too: at a million events a run
        # took 21-27 s with Spark's 1g and 16-21 s with 4g (the JVM takes only what it uses).
        "spark.driver.memory": "4g",
        "spark.driver.host": options.driver_host,
        # Executors on other hosts (or containers) connect to the driver's host name: listen
        # on every interface then; on loopback only otherwise.
        "spark.driver.bindAddress": options.driver_host if _loopback(options.driver_host) else "0.0.0.0",
        # The executors' Python workers: the driver's interpreter (the same version is required).
        "spark.pyspark.python": options.python,
        "spark.ui.enabled": "false",
        # Spark's own progress bar per stage, on a terminal (not in logs or captured output).
        "spark.ui.showConsoleProgress": "true" if sys.stderr.isatty() else "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{_log_config()}",
        "spark.sql.session.timeZone": "UTC",
        # The run's classified rows are cached once and read three times (counts, curated,
        # rejected): compressing the cache cost about a tenth of a run's JVM samples at 1M
        # events (the encoders' statistics), for memory the 4g heap has.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Raw objects are small: pack many into one task instead of one task per 4 MB.
        "spark.sql.files.openCostInBytes": str(64 * 1024),
        # Each run lists its prefixes once; a session-wide cache of 100k file statuses
        # would only hold driver memory (and warn when it overflows).
        "spark.sql.hive.filesourcePartitionFileCacheSize": "0",
    }
    if options.executor_memory:
        conf["spark.executor.memory"] = options.executor_memory
    if options.executor_cores:
        conf["spark.executor.cores"] = str(options.executor_cores)
    if jars and (options.local or options.ship_jars):
        conf["spark.jars"] = ",".join(str(j) for j in jars)
    elif jars:
        conf["spark.driver.extraClassPath"] = conf["spark.executor.extraClassPath"] = ":".join(str(j) for j in jars)
    if s3 is not None:
        conf.update({f"spark.hadoop.{k}": v for k, v in s3a_conf(s3).items()})
    conf.update(options.conf)
    return conf


def _ensure_java() -> None:
    """Point JAVA_HOME at a JDK 17+ under /usr/lib/jvm when no `java` is reachable."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    for home in sorted(Path("/usr/lib/jvm").glob("*"), reverse=True):
        if (home / "bin" / "java").exists() and any(v in home.name for v in ("17", "21", "25")):
            os.environ["JAVA_HOME"] = str(home)
            return


def _prepare_process(conf: dict[str, str]) -> None:
    """What PySpark takes from the process rather than the conf: the Java to start, the
    executors' Python (read by the SparkContext from PYSPARK_PYTHON), the local address."""
    _ensure_java()
    os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    if _loopback(conf["spark.driver.host"]):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark warns about the host name


def spark_session(
    s3: S3Connection | None = None,
    jars: Sequence[Path] = (),
    *,
    options: SparkOptions | None = None,
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
    conf = session_conf(s3, jars, options)
    _prepare_process(conf)
    say(f"starting Spark ({conf['spark.master']})")
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def submitted_session(
    root: str,
    s3: S3Connection,
    jars_dir: Path | None = None,
    *,
    options: SparkOptions | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Any:
    """The SparkSession of a job handed to `spark-submit` (`wotr_apps/etl/submit.py`).

    spark-submit has started the driver's JVM with its command line (`--master`, `--conf`,
    `--driver-class-path`, ...): those settings win, and `session_conf` fills in every key
    the command line left unset (the master always comes from the command line). What only
    counts when the JVM starts (the driver's class path, memory and Java options) must be on
    the command line. Run without spark-submit, the JVM is started here with all of
    `session_conf`, as `spark_session` does.
    """
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    from .jars import ensure_jars

    on_s3 = root.startswith(S3A)
    options = options or SparkOptions()
    jars = ensure_jars(jars_dir, say=say) if on_s3 else []
    wanted = session_conf(s3 if on_s3 else None, jars, options)
    _prepare_process(wanted)
    # Connects to spark-submit's JVM; started with `wanted` when there is none.
    SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(list(wanted.items())))
    given = dict(SparkConf().getAll())  # what the command line set (the JVM's spark.* properties)
    # The settings again, for the master the command line chose: on a cluster the jars go
    # on the executors' class path (or are shipped), in local mode as spark.jars.
    options = replace(options, master=given.get("spark.master", options.master))
    wanted = session_conf(s3 if on_s3 else None, jars, options)
    fill = {k: v for k, v in wanted.items() if k not in given}
    if "spark.pyspark.python" in given:
        os.environ["PYSPARK_PYTHON"] = given["spark.pyspark.python"]
    say(f"starting Spark ({options.master}, settings of spark-submit first)")
    spark = SparkSession.builder.config(map=fill).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if on_s3:
        loader = spark._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        try:
            spark._jvm.java.lang.Class.forName("org.apache.hadoop.fs.s3a.S3AFileSystem", False, loader)
        except Exception:
            spark.stop()
            from .jars import JarResolutionError

            raise JarResolutionError(
                "the s3a jars are not on the driver's class path: give spark-submit "
                "--driver-class-path \"$(python -m wotr_apps.etl.submit --classpath)\" (docs/etl.md, On a cluster)"
            ) from None
    return spark


def etl_session(
    root: str,
    s3: S3Connection,
    jars_dir: Path | None = None,
    *,
    options: SparkOptions | None = None,
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
    spark = spark_session(s3 if on_s3 else None, jars, options=options, say=say)
    if owned:
        say(f"Spark ready in {time.monotonic() - started:.1f}s")
    try:
        yield spark
    finally:
        if owned:
            spark.stop()
