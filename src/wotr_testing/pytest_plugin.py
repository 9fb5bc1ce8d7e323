"""pytest fixtures for projects that embed wotr, and for wotr's own suites.

In-process platforms (no servers), through the public API (`import wotr`):

- `wotr_platform`: a `wotr.Platform` on the memory profile, consumer and relay threads
  running; `wotr_embedded_platform`: the same on the embedded profile in a temporary
  directory (files, SQLite, the in-process ClickHouse engine);
- `wotr_http`: an HTTP test client (Litestar's, httpx-compatible) against the API on the
  memory profile, e.g. `wotr_http.post("/ingest", json={"payload": {...}})`.

Real services: Kafka, S3, PostgreSQL, ClickHouse.

Each connection fixture is session-scoped and resolved in this order:

1. environment variables, when set (`KAFKA_BOOTSTRAP`, `MINIO_ENDPOINT`,
   `POSTGRES_HOST`, `CLICKHOUSE_HOST` or `CLICKHOUSE_DSN`): services you already run;
2. testcontainers (Redpanda, MinIO, PostgreSQL, ClickHouse) when a Docker engine answers;
3. the native local stack (`wotr_testing.stack`, brought up for that one service);
   ClickHouse has no native server, so it falls back to the in-process engine,
   `chdb://<tmp dir of this process>`.

With `CI` set, a service that cannot be had fails the run; otherwise the test is skipped
with the reason. The variables are read as wotr's settings read them
(`Settings.from_env(..., profile="local")`), so a fixture's connection is the one the
`local` profile would use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn

import pytest

from wotr_adapters.connections import ClickHouseConnection, KafkaConnection, PostgresConnection, S3Connection
from wotr_apps.settings import Settings
from wotr_testing.stack import Stack, StackError
from wotr_testing.stack.paths import StackPaths, default_home

__all__ = [
    "wotr_chdb_dsn",
    "wotr_embedded_platform",
    "wotr_http",
    "wotr_platform",
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


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set: a service that cannot be had fails the run)", pytrace=False)
    pytest.skip(reason)


def stack_env_file() -> Path:
    """`<stack home>/run/env`: where the native stack writes its endpoints."""
    return StackPaths(default_home()).env_file


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
        """Bring `service` up on the native stack; return the variables that reach the stack."""
        try:
            self.native_env.update(Stack().up([service]))
        except (StackError, OSError, ValueError) as exc:
            tail = "\n".join(str(exc).strip().splitlines()[-25:])
            _unavailable(f"native stack could not start {service}:\n{tail}")
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
    _unavailable(f"testcontainers has no {name}; install wotr[testing]")


def _env_set(*names: str) -> bool:
    return any((os.environ.get(name) or "").strip() for name in names)


def _settings(overrides: Mapping[str, str] | None = None) -> Settings:
    """The settings the `local` profile reads from this environment, with `overrides` applied."""
    return Settings.from_env({**os.environ, **(overrides or {})}, profile="local")


@pytest.fixture(scope="session")
def _wotr_services() -> Iterator[_Services]:
    services = _Services()
    with services.containers:
        yield services


@pytest.fixture(scope="session")
def kafka_connection(_wotr_services: _Services) -> KafkaConnection:
    """A Kafka-protocol broker: `KAFKA_BOOTSTRAP`, else Redpanda in Docker, else the native Kafka."""
    if _env_set("KAFKA_BOOTSTRAP"):
        return _settings().kafka
    if docker_available():
        redpanda = _wotr_services.container(_container_class("kafka", "RedpandaContainer"))
        return _settings({"KAFKA_BOOTSTRAP": redpanda.get_bootstrap_server()}).kafka
    return _settings(_wotr_services.native("kafka")).kafka


@pytest.fixture(scope="session")
def s3_connection(_wotr_services: _Services) -> S3Connection:
    """An S3 endpoint: `MINIO_ENDPOINT`, else MinIO in Docker, else the native S3 server."""
    if _env_set("MINIO_ENDPOINT"):
        return _settings().s3
    if docker_available():
        defaults = S3Connection()
        minio_class = _container_class("minio", "MinioContainer")
        minio = _wotr_services.container(
            lambda: minio_class(access_key=defaults.access_key, secret_key=defaults.secret_key))
        config = minio.get_config()
        return _settings({"MINIO_ENDPOINT": config["endpoint"], "MINIO_ACCESS_KEY": config["access_key"],
                          "MINIO_SECRET_KEY": config["secret_key"]}).s3
    return _settings(_wotr_services.native("s3")).s3


@pytest.fixture(scope="session")
def postgres_connection(_wotr_services: _Services) -> PostgresConnection:
    """A PostgreSQL server: `POSTGRES_HOST`, else PostgreSQL in Docker, else the native cluster."""
    if _env_set("POSTGRES_HOST"):
        return _settings().postgres
    if docker_available():
        defaults = PostgresConnection()
        postgres_class = _container_class("postgres", "PostgresContainer")
        server = _wotr_services.container(lambda: postgres_class(
            "postgres:15", username=defaults.user, password=defaults.password, dbname=defaults.dbname, driver=None))
        return _settings({
            "POSTGRES_HOST": server.get_container_host_ip(), "POSTGRES_PORT": str(server.get_exposed_port(5432)),
            "POSTGRES_USER": defaults.user, "POSTGRES_PASSWORD": defaults.password, "POSTGRES_DB": defaults.dbname,
        }).postgres
    return _settings(_wotr_services.native("postgres")).postgres


@pytest.fixture(scope="session")
def wotr_chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one in-process ClickHouse engine of this test process (`chdb://<dir>`).

    The engine can be opened at one path per process only: every fixture and test that
    wants the in-process engine uses this DSN, each with a database of its own.
    """
    return f"chdb://{tmp_path_factory.mktemp(f'chdb-{os.getpid()}', numbered=True)}"


@pytest.fixture(scope="session")
def clickhouse_connection(_wotr_services: _Services, wotr_chdb_dsn: str) -> ClickHouseConnection:
    """ClickHouse: `CLICKHOUSE_DSN`/`CLICKHOUSE_HOST`, else a server in Docker, else `chdb://<tmp>`.

    The in-process engine locks its directory, so each process (each pytest-xdist
    worker) gets its own.
    """
    if _env_set("CLICKHOUSE_DSN", "CLICKHOUSE_HOST"):
        return _settings().clickhouse
    if docker_available():
        defaults = ClickHouseConnection()
        clickhouse_class = _container_class("clickhouse", "ClickHouseContainer")
        server = _wotr_services.container(
            lambda: clickhouse_class(username="wotr", password="wotr", dbname=defaults.database))
        return _settings({
            "CLICKHOUSE_HOST": server.get_container_host_ip(), "CLICKHOUSE_PORT": str(server.get_exposed_port(8123)),
            "CLICKHOUSE_USER": "wotr", "CLICKHOUSE_PASSWORD": "wotr",
        }).clickhouse
    if importlib.util.find_spec("chdb") is None:
        _unavailable("no ClickHouse: set CLICKHOUSE_HOST or CLICKHOUSE_DSN, run Docker, or install wotr[embedded]")
    return _settings({"CLICKHOUSE_DSN": wotr_chdb_dsn}).clickhouse


@pytest.fixture(scope="session")
def prometheus_url(_wotr_services: _Services) -> str:
    """A Prometheus base URL: `PROMETHEUS_URL`, else the native stack's Prometheus."""
    if _env_set("PROMETHEUS_URL"):
        return os.environ["PROMETHEUS_URL"].strip().rstrip("/")
    env = _wotr_services.native("prometheus")
    if "PROMETHEUS_URL" not in env:
        _unavailable("the native stack exports no PROMETHEUS_URL")
    return env["PROMETHEUS_URL"].rstrip("/")


@pytest.fixture
def wotr_platform() -> Iterator[Any]:
    """A `wotr.Platform` on the memory profile (consumer and relay threads running), closed after the test."""
    import wotr

    with wotr.open("memory", env={}) as platform:
        yield platform


@pytest.fixture
def wotr_embedded_platform(tmp_path: Path, wotr_chdb_dsn: str, unique_name: str) -> Iterator[Any]:
    """A `wotr.Platform` on the embedded profile with its data under `tmp_path / "wotr"`; its
    analytics rows in a database of its own in the process's in-process engine."""
    import wotr

    with wotr.open("embedded", env={}, data_dir=tmp_path / "wotr", clickhouse_dsn=wotr_chdb_dsn,
                   clickhouse_database=unique_name) as platform:
        yield platform


@pytest.fixture
def wotr_http() -> Iterator[Any]:
    """An HTTP test client against wotr's API on the memory profile (workers running)."""
    from litestar.testing import TestClient

    from wotr_apps.container import build_container

    container = build_container(Settings.from_env({}, profile="memory"), with_workers=True)
    with TestClient(container.app()) as client:
        yield client


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
