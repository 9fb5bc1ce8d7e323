"""pytest fixtures that hand tests real services: Kafka, S3, PostgreSQL, ClickHouse.

Each connection fixture is session-scoped and resolved in this order:

1. environment variables, when set (`KAFKA_BOOTSTRAP`, `MINIO_ENDPOINT`,
   `POSTGRES_HOST`, `CLICKHOUSE_HOST` or `CLICKHOUSE_DSN`): services you already run;
2. testcontainers (Redpanda, MinIO, PostgreSQL, ClickHouse) when a Docker engine answers;
3. the native local stack (`python -m wotr_apps.stack up --only SERVICE`, then the
   endpoints read from `<stack home>/run/env`); ClickHouse has no native server, so it
   falls back to the in-process engine, `chdb://<tmp dir of this process>`.

With `CI` set, a service that cannot be had fails the run; otherwise the test is skipped
with the reason. The stack is started as a subprocess because this module belongs to
the adapters layer and must not import `wotr_apps`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn

import pytest

from wotr_adapters.connections import ClickHouseConnection, KafkaConnection, PostgresConnection, S3Connection

__all__ = [
    "clickhouse_connection",
    "docker_available",
    "kafka_connection",
    "postgres_connection",
    "prometheus_url",
    "s3_connection",
    "stack_env_file",
    "unique_name",
]

SERVICE_FIXTURES = frozenset(
    {"kafka_connection", "s3_connection", "postgres_connection", "clickhouse_connection", "prometheus_url"})
_STACK_UP_TIMEOUT = 900.0  # the first run installs and builds: minutes, once per machine


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set: a service that cannot be had fails the run)", pytrace=False)
    pytest.skip(reason)


def stack_env_file() -> Path:
    """`<stack home>/run/env`, with the home chosen exactly as `wotr stack` chooses it."""
    raw = os.environ.get("WOTR_STACK_HOME", "").strip()
    home = Path(raw).expanduser().resolve() if raw else Path.home() / ".local" / "share" / "wotr-stack"
    return home / "run" / "env"


_docker: bool | None = None


def docker_available() -> bool:
    """True when a Docker engine answers a ping (checked once per process)."""
    global _docker
    if _docker is None:
        _docker = False
        if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists():
            try:
                import docker

                client = docker.from_env(timeout=3)
                try:
                    _docker = bool(client.ping())
                finally:
                    client.close()
            except Exception:  # no engine, no permission, no client library: no Docker
                _docker = False
    return _docker


class _Services:
    """Per-session state: containers started (stopped at the end) and the native stack."""

    def __init__(self) -> None:
        self.containers = ExitStack()
        self.native_env: dict[str, str] = {}

    def native(self, service: str) -> dict[str, str]:
        """Bring `service` up on the native stack; return the stack's env file as a dict."""
        command = [sys.executable, "-m", "wotr_apps.stack", "up", "--only", service]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_STACK_UP_TIMEOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            _unavailable(f"native stack: `{' '.join(command[1:])}` did not finish in {_STACK_UP_TIMEOUT:.0f}s")
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-25:])
            _unavailable(f"native stack could not start {service} (exit {done.returncode}):\n{tail}")
        env_file = stack_env_file()
        try:
            lines = env_file.read_text().splitlines()
        except FileNotFoundError:
            _unavailable(f"native stack started {service} but wrote no {env_file}")
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip():
                self.native_env[key.strip()] = value.strip()
        return dict(self.native_env)

    def container(self, factory: Callable[[], Any]) -> Any:
        return self.containers.enter_context(factory())


def _container_class(module: str, name: str) -> Any:
    """A testcontainers class; the `community` package layout first, the older one second."""
    for prefix in ("testcontainers.community.", "testcontainers."):
        try:
            return getattr(importlib.import_module(prefix + module), name)
        except (ImportError, AttributeError):
            continue
    _unavailable(f"testcontainers has no {name}; install wotr[test]")


def _env_set(*names: str) -> bool:
    return any((os.environ.get(name) or "").strip() for name in names)


def _merged(overrides: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **overrides}


@pytest.fixture(scope="session")
def _wotr_services() -> Iterator[_Services]:
    services = _Services()
    with services.containers:
        yield services


@pytest.fixture(scope="session")
def kafka_connection(_wotr_services: _Services) -> KafkaConnection:
    """A Kafka-protocol broker: `KAFKA_BOOTSTRAP`, else Redpanda in Docker, else the native Kafka."""
    if _env_set("KAFKA_BOOTSTRAP"):
        return KafkaConnection.from_env()
    if docker_available():
        redpanda = _wotr_services.container(_container_class("kafka", "RedpandaContainer"))
        return KafkaConnection.from_env(_merged({"KAFKA_BOOTSTRAP": redpanda.get_bootstrap_server()}))
    return KafkaConnection.from_env(_merged(_wotr_services.native("kafka")))


@pytest.fixture(scope="session")
def s3_connection(_wotr_services: _Services) -> S3Connection:
    """An S3 endpoint: `MINIO_ENDPOINT`, else MinIO in Docker, else the native S3 server."""
    if _env_set("MINIO_ENDPOINT"):
        return S3Connection.from_env()
    if docker_available():
        defaults = S3Connection()
        minio_class = _container_class("minio", "MinioContainer")
        minio = _wotr_services.container(
            lambda: minio_class(access_key=defaults.access_key, secret_key=defaults.secret_key))
        config = minio.get_config()
        return S3Connection.from_env(_merged({"MINIO_ENDPOINT": config["endpoint"],
                                              "MINIO_ACCESS_KEY": config["access_key"],
                                              "MINIO_SECRET_KEY": config["secret_key"]}))
    return S3Connection.from_env(_merged(_wotr_services.native("s3")))


@pytest.fixture(scope="session")
def postgres_connection(_wotr_services: _Services) -> PostgresConnection:
    """A PostgreSQL server: `POSTGRES_HOST`, else PostgreSQL in Docker, else the native cluster."""
    if _env_set("POSTGRES_HOST"):
        return PostgresConnection.from_env()
    if docker_available():
        defaults = PostgresConnection()
        postgres_class = _container_class("postgres", "PostgresContainer")
        server = _wotr_services.container(lambda: postgres_class(
            "postgres:15", username=defaults.user, password=defaults.password, dbname=defaults.dbname, driver=None))
        return PostgresConnection.from_env(_merged({
            "POSTGRES_HOST": server.get_container_host_ip(), "POSTGRES_PORT": str(server.get_exposed_port(5432)),
            "POSTGRES_USER": defaults.user, "POSTGRES_PASSWORD": defaults.password, "POSTGRES_DB": defaults.dbname}))
    return PostgresConnection.from_env(_merged(_wotr_services.native("postgres")))


@pytest.fixture(scope="session")
def clickhouse_connection(_wotr_services: _Services, tmp_path_factory: pytest.TempPathFactory) -> ClickHouseConnection:
    """ClickHouse: `CLICKHOUSE_DSN`/`CLICKHOUSE_HOST`, else a server in Docker, else `chdb://<tmp>`.

    The in-process engine locks its directory, so each process (each pytest-xdist
    worker) gets its own.
    """
    if _env_set("CLICKHOUSE_DSN", "CLICKHOUSE_HOST"):
        return ClickHouseConnection.from_env()
    if docker_available():
        defaults = ClickHouseConnection()
        clickhouse_class = _container_class("clickhouse", "ClickHouseContainer")
        server = _wotr_services.container(
            lambda: clickhouse_class(username="wotr", password="wotr", dbname=defaults.database))
        return ClickHouseConnection.from_env(_merged({
            "CLICKHOUSE_HOST": server.get_container_host_ip(), "CLICKHOUSE_PORT": str(server.get_exposed_port(8123)),
            "CLICKHOUSE_USER": "wotr", "CLICKHOUSE_PASSWORD": "wotr"}))
    if importlib.util.find_spec("chdb") is None:
        _unavailable("no ClickHouse: set CLICKHOUSE_HOST or CLICKHOUSE_DSN, run Docker, or install wotr[embedded]")
    path = tmp_path_factory.mktemp(f"chdb-{os.getpid()}", numbered=True)
    return ClickHouseConnection.from_env(default_dsn=f"chdb://{path}")


@pytest.fixture(scope="session")
def prometheus_url(_wotr_services: _Services) -> str:
    """A Prometheus base URL: `PROMETHEUS_URL`, else the native stack's Prometheus."""
    if _env_set("PROMETHEUS_URL"):
        return os.environ["PROMETHEUS_URL"].strip().rstrip("/")
    env = _wotr_services.native("prometheus")
    if "PROMETHEUS_URL" not in env:
        _unavailable(f"native stack wrote no PROMETHEUS_URL to {stack_env_file()}")
    return env["PROMETHEUS_URL"].rstrip("/")


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A fresh lowercase name, valid as a Kafka topic, S3 bucket, SQL schema or table name."""
    stem = re.sub(r"[^a-z0-9]", "", request.node.name.lower().removeprefix("test"))[:24]
    return f"w{stem}{uuid.uuid4().hex[:12]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "services: needs the real services (Kafka, S3, PostgreSQL, ClickHouse)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use a service fixture, so `-m "not services"` leaves them out."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker("services")
