"""A harness that runs wotr's API, consumer and relay as separate processes on the local
profile, against the real services, with one isolated namespace (topic, bucket, schema)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from wotr_adapters.connections import KafkaConnection, PostgresConnection, S3Connection

WOTR = [sys.executable, "-m", "wotr_apps.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Pipeline:
    workdir: Path
    s3: S3Connection
    kafka: KafkaConnection
    postgres: PostgresConnection
    name: str = field(default_factory=lambda: f"wit{uuid.uuid4().hex[:10]}")
    api_port: int = field(default_factory=free_port)
    consumer_metrics_port: int = field(default_factory=free_port)
    relay_metrics_port: int = field(default_factory=free_port)
    sql_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def clickhouse_path(self) -> Path:
        return self.workdir / "clickhouse"

    def env(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "CLICKHOUSE_"))}
        env.update({
            "WOTR_PROFILE": "local",
            "WOTR_PORT": str(self.api_port),
            "WOTR_RELAY_GRACE_SECONDS": "2",
            "WOTR_RELAY_INTERVAL_SECONDS": "0.5",
            "WOTR_CONSUMER_BATCH_SIZE": "500",
            "WOTR_CONSUMER_BATCH_SECONDS": "0.2",
            "WOTR_SQL_PORT": str(self.sql_port),  # the consumer serves its engine's rows here
            "MINIO_ENDPOINT": self.s3.endpoint, "MINIO_ACCESS_KEY": self.s3.access_key,
            "MINIO_SECRET_KEY": self.s3.secret_key, "MINIO_BUCKET": self.name,
            "KAFKA_BOOTSTRAP": self.kafka.bootstrap, "KAFKA_TOPIC": self.name, "KAFKA_GROUP": f"{self.name}-analytics",
            "POSTGRES_HOST": self.postgres.host, "POSTGRES_PORT": str(self.postgres.port),
            "POSTGRES_USER": self.postgres.user, "POSTGRES_PASSWORD": self.postgres.password,
            "POSTGRES_DB": self.postgres.dbname, "POSTGRES_SCHEMA": self.name,
            # The in-process engine locks its directory: the consumer owns the analytics data.
            "CLICKHOUSE_DSN": f"chdb://{self.clickhouse_path if role == 'consume' else self.workdir / f'ch-{role}'}",
        })
        env.update(self.extra_env)
        return env

    def start(self, role: str) -> subprocess.Popen:
        args = {"serve": ["serve", "--api-only"], "consume": ["consume", "--metrics-port", str(self.consumer_metrics_port)],
                "relay": ["relay", "--metrics-port", str(self.relay_metrics_port)]}[role]
        ready = self.workdir / f"{role}.ready"
        ready.unlink(missing_ok=True)
        if role != "serve":
            args += ["--ready-file", str(ready)]
        log = open(self.workdir / f"{role}.log", "ab")
        proc = subprocess.Popen([*WOTR, *args], env=self.env(role), cwd=self.workdir, stdout=log, stderr=log)
        self.procs[role] = proc
        if role == "serve":
            wait_until(lambda: self._healthy() or self._died(role), 60, "the API to answer /health")
        else:
            wait_until(lambda: ready.exists() or self._died(role), 60, f"wotr {role} to be ready")
        self._died(role)
        return proc

    def _died(self, role: str) -> bool:
        proc = self.procs[role]
        if proc.poll() is not None:
            raise AssertionError(f"wotr {role} exited with {proc.returncode}:\n{self.log(role)[-3000:]}")
        return False

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self, role: str) -> str:
        path = self.workdir / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, role: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.pop(role)
        proc.send_signal(sig)
        return proc.wait(timeout)

    def stop_all(self) -> None:
        for role in list(self.procs):
            try:
                self.stop(role)
            except subprocess.TimeoutExpired:
                self.procs.get(role) and self.procs[role].kill()

    def consumer_metric(self, name: str) -> float:
        """Sum of a metric's samples on the running consumer's /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.consumer_metrics_port}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " ")))

    def consumer_lag(self) -> float | None:
        """The consumer's reported lag over all partitions; None until it reported one."""
        text = httpx.get(f"http://127.0.0.1:{self.consumer_metrics_port}/metrics", timeout=5).text
        samples = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("wotr_consumer_lag{")]
        return sum(samples) if samples else None

    def wait_caught_up(self, timeout: float = 120) -> None:
        """Wait until the running consumer reports no uncommitted message left."""
        wait_until(lambda: self._died("consume") or self.consumer_lag() == 0, timeout, "the consumer to catch up", interval=0.5)

    def wait_loaded(self, rows: int, timeout: float = 120) -> None:
        """Wait until the consumer reports at least `rows` rows written to ClickHouse."""
        wait_until(lambda: self._died("consume") or self.consumer_metric("wotr_sink_rows_total") >= rows,
                   timeout, f"{rows} rows loaded by the consumer")

    def clickhouse(self, sql: str) -> list[list]:
        """Run a query on the consumer's engine; the consumer must be stopped (engine lock)."""
        assert "consume" not in self.procs, "stop the consumer before reading its engine"
        code = (
            "import json, sys, clickhouse_connect;"
            f"c = clickhouse_connect.get_client(dsn={f'chdb://{self.clickhouse_path}'!r});"
            "print(json.dumps(c.query(sys.argv[1]).result_rows, default=str))"
        )
        out = subprocess.run([sys.executable, "-c", code, sql], capture_output=True, text=True, cwd=self.workdir, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])
