"""Adapter factories for the contract suites: every adapter of a port runs every test.

Each port has a registry `name -> factory(request, tmp_path)`; the fixtures are
parametrised over the registry, so adding an adapter to it enrolls it in the whole
contract. Real adapters pull their connection settings from the service fixtures of
the wotr pytest plugin, lazily, so the in-memory ids need no server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wotr_adapters.clickhouse import ClickHouseAnalyticsSink
from wotr_adapters.clickhouse import clickhouse_client as build_clickhouse_client
from wotr_adapters.connections import ClickHouseConnection
from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryAnalyticsSink, InMemoryEventBus, InMemoryMetadataRepo, InMemoryObjectStore
from wotr_adapters.sqlite_bus import SqliteEventBus
from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
from wotr_adapters.memory import InMemoryKeyStore
from wotr_adapters.sqlite_keys import SqliteKeyStore

import real_adapters

Factory = Callable[[pytest.FixtureRequest, Path], Any]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def _outage(adapter: Any) -> Any:
    adapter.outage = True
    return adapter


# -- object stores ---------------------------------------------------------------------

OBJECT_STORES: dict[str, Factory] = {
    "memory": lambda request, tmp: InMemoryObjectStore(),
    "filesystem": lambda request, tmp: FilesystemObjectStore(tmp / "objects"),
    "minio": real_adapters.minio_store,
}


def _under_a_file(tmp: Path) -> Path:
    """A path whose parent is a regular file: nothing can ever be created there."""
    blocker = tmp / "not-a-directory"
    blocker.write_bytes(b"")
    return blocker


DOWN_OBJECT_STORES: dict[str, Factory] = {
    "memory": lambda request, tmp: _outage(InMemoryObjectStore()),
    "filesystem": lambda request, tmp: FilesystemObjectStore(_under_a_file(tmp) / "objects"),
    "minio": real_adapters.down_minio_store,
}

# -- event buses -----------------------------------------------------------------------

EVENT_BUSES: dict[str, Factory] = {
    "memory": lambda request, tmp: InMemoryEventBus(topic=unique("t")),
    "sqlite": lambda request, tmp: SqliteEventBus(tmp / "bus.db", topic=unique("t")),
    "kafka": real_adapters.kafka_event_bus,
}

DOWN_EVENT_BUSES: dict[str, Factory] = {
    "memory": lambda request, tmp: _outage(InMemoryEventBus()),
    "sqlite": lambda request, tmp: SqliteEventBus(_under_a_file(tmp) / "bus.db"),
    "kafka": real_adapters.down_kafka_bus,
}

# -- metadata repos --------------------------------------------------------------------

METADATA_REPOS: dict[str, Factory] = {
    "memory": lambda request, tmp: InMemoryMetadataRepo(),
    "sqlite": lambda request, tmp: SqliteMetadataRepo(tmp / "metadata.db"),
    "postgres": real_adapters.postgres_repo,
}

DOWN_METADATA_REPOS: dict[str, Factory] = {
    "memory": lambda request, tmp: _outage(InMemoryMetadataRepo()),
    "sqlite": lambda request, tmp: SqliteMetadataRepo(_under_a_file(tmp) / "metadata.db"),
    "postgres": real_adapters.down_postgres_repo,
}

# -- key stores ------------------------------------------------------------------------


def _postgres_key_store(request: pytest.FixtureRequest, tmp: Path) -> Any:
    from functools import partial

    from wotr_adapters.postgres import postgres_pool
    from wotr_adapters.postgres_keys import PostgresKeyStore

    conn = request.getfixturevalue("postgres_connection")
    store = PostgresKeyStore(partial(postgres_pool, conn, max_size=2), schema=unique("contract_keys_"))
    request.addfinalizer(partial(real_adapters.drop_schema, conn, store.schema))
    return store


def _down_postgres_key_store(request: pytest.FixtureRequest, tmp: Path) -> Any:
    from functools import partial

    from wotr_adapters.connections import PostgresConnection
    from wotr_adapters.postgres import postgres_pool
    from wotr_adapters.postgres_keys import PostgresKeyStore

    host, port = real_adapters.NOWHERE.split(":")
    pool = partial(postgres_pool, PostgresConnection(host=host, port=int(port)), timeout=2.0)
    return PostgresKeyStore(pool, start_timeout=2.0)


KEY_STORES: dict[str, Factory] = {
    "memory": lambda request, tmp: InMemoryKeyStore(),
    "sqlite": lambda request, tmp: SqliteKeyStore(tmp / "keys.db"),
    "postgres": _postgres_key_store,
}

DOWN_KEY_STORES: dict[str, Factory] = {
    "memory": lambda request, tmp: _outage(InMemoryKeyStore()),
    "sqlite": lambda request, tmp: SqliteKeyStore(_under_a_file(tmp) / "keys.db"),
    "postgres": _down_postgres_key_store,
}

# -- analytics sinks -------------------------------------------------------------------


def _clickhouse(request: pytest.FixtureRequest, tmp: Path) -> ClickHouseAnalyticsSink:
    client = request.getfixturevalue("clickhouse_client")
    return ClickHouseAnalyticsSink(client, database=unique("wotr_contract_"))


ANALYTICS_SINKS: dict[str, Factory] = {
    "memory": lambda request, tmp: InMemoryAnalyticsSink(),
    "clickhouse": _clickhouse,
}

DOWN_ANALYTICS_SINKS: dict[str, Factory] = {
    "memory": lambda request, tmp: _outage(InMemoryAnalyticsSink()),
    # The same adapter code against a ClickHouse server that does not answer.
    "clickhouse": lambda request, tmp: ClickHouseAnalyticsSink(
        build_clickhouse_client(ClickHouseConnection(host="127.0.0.1", port=1))
    ),
}


@pytest.fixture(scope="session")
def clickhouse_client(clickhouse_connection: ClickHouseConnection) -> Iterator[Any]:
    """One client per session: the in-process engine allows one data path per process."""
    client = build_clickhouse_client(clickhouse_connection)
    yield client
    client.close()


# -- fixtures --------------------------------------------------------------------------


def _started(factory: Factory, request: pytest.FixtureRequest, tmp: Path) -> Iterator[Any]:
    adapter = factory(request, tmp)
    adapter.start()
    try:
        yield adapter
    finally:
        adapter.close()


@pytest.fixture(params=sorted(OBJECT_STORES))
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _started(OBJECT_STORES[request.param], request, tmp_path)


@pytest.fixture(params=sorted(EVENT_BUSES))
def event_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _started(EVENT_BUSES[request.param], request, tmp_path)


@pytest.fixture(params=sorted(METADATA_REPOS))
def metadata_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _started(METADATA_REPOS[request.param], request, tmp_path)


@pytest.fixture(params=sorted(KEY_STORES))
def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _started(KEY_STORES[request.param], request, tmp_path)


@pytest.fixture(params=sorted(ANALYTICS_SINKS))
def analytics_sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _started(ANALYTICS_SINKS[request.param], request, tmp_path)


def _down(registry: dict[str, Factory]):
    @pytest.fixture(params=sorted(registry))
    def fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
        """A factory of an adapter whose service is down; building it may already fail."""
        return lambda: registry[request.param](request, tmp_path)

    return fixture


down_object_store = _down(DOWN_OBJECT_STORES)
down_event_bus = _down(DOWN_EVENT_BUSES)
down_metadata_repo = _down(DOWN_METADATA_REPOS)
down_analytics_sink = _down(DOWN_ANALYTICS_SINKS)
down_key_store = _down(DOWN_KEY_STORES)
