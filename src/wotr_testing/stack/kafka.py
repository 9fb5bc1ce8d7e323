"""Apache Kafka in KRaft combined mode (one node), run from jars resolved by Maven."""

from __future__ import annotations

import base64
import logging
import os
import shutil
from pathlib import Path

from wotr_adapters.connections import KafkaConnection

from .paths import render_template
from .process import StackError, run_logged, say
from .service import Service

__all__ = ["KAFKA_VERSION", "Kafka"]

KAFKA_VERSION = "4.4.0"
LOG4J_VERSION = "2.26.1"
BROKER_PORT = int(KafkaConnection().bootstrap.rsplit(":", 1)[1])


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if not found:
        raise StackError("kafka needs Java 17 or newer on PATH (apt-get install openjdk-17-jre-headless)")
    return found


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting
    with "-" (the storage tool would read it as an option; one id in 64 did, and the
    format failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    name = "kafka"
    default_port = BROKER_PORT
    marker = "kafka.Kafka"
    start_timeout = 120.0

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.controller_port)

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def libs(self) -> Path:
        return self.paths.cache / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def config_file(self) -> Path:
        return self.paths.run / "kafka-server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.paths.run / "kafka-log4j2.xml"

    def exports(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP": self.endpoint}

    def install(self) -> None:
        if (self.libs / ".complete").exists():
            return
        if not shutil.which("mvn"):
            raise StackError("kafka: Maven (mvn) is needed once to fetch the Kafka jars (apt-get install maven)")
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        pom = work / "pom.xml"
        pom.write_text(render_template("kafka-pom.xml", kafka_version=KAFKA_VERSION, log4j_version=LOG4J_VERSION))
        staging = work / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        repo = self.paths.cache / "maven-repo"
        say(f"kafka: resolving Kafka {KAFKA_VERSION} jars with Maven into {self.libs}")
        run_logged(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}", f"-Dmaven.repo.local={repo}"],
                   log_file=self.paths.log("install-kafka"), what="kafka: mvn dependency:copy-dependencies")
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        (self.libs / ".complete").write_text(f"kafka_2.13 {KAFKA_VERSION}\n")
        shutil.rmtree(repo, ignore_errors=True)  # the libs folder is all the broker needs

    def _java_command(self, main: str, *args: str, heap: str = "512M") -> list[str]:
        return [_java(), f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.log4j_file}",
                f"-Dkafka.logs.dir={self.paths.logs}", "-cp", f"{self.libs}/*", main, *args]

    def prepare(self) -> None:
        log_dir = self.data_dir / "kraft-logs"
        self.config_file.write_text(render_template(
            "kafka-server.properties", broker_port=self.port, controller_port=self.controller_port, log_dir=log_dir))
        self.log4j_file.write_text(render_template("kafka-log4j2.xml"))
        if (log_dir / "meta.properties").exists():
            return
        id_file = self.data_dir / "cluster-id"
        cluster_id = id_file.read_text().strip() if id_file.exists() else ""
        if not cluster_id or cluster_id.startswith("-"):  # (a leading "-" reads as an option to the tool)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = new_cluster_id()
            id_file.write_text(cluster_id + "\n")
        run_logged(self._java_command("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                      "-c", str(self.config_file), "--standalone", heap="256M"),
                   log_file=self.log_file, what="kafka: format storage")

    def command(self) -> list[str]:
        return self._java_command("kafka.Kafka", str(self.config_file))

    def probe(self) -> None:
        from confluent_kafka.admin import AdminClient

        quiet = logging.getLogger("wotr.stack.kafka-probe")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        admin = AdminClient({"bootstrap.servers": self.endpoint, "socket.timeout.ms": 3000,
                             "socket.connection.setup.timeout.ms": 2000, "logger": quiet})
        metadata = admin.list_topics(timeout=3)
        if not metadata.brokers:
            raise StackError("kafka answered without any broker in its metadata")

