"""Unit fixtures: services wired to in-memory adapters, whose state the tests inspect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wotr_adapters.memory import InMemoryAnalyticsSink, InMemoryEventBus, InMemoryMetadataRepo, InMemoryObjectStore
from wotr_domain.services import AnalyticsLoader, IngestService, OutboxRelay


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 5, 17, 23, 59, 59, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> InMemoryObjectStore:
    return InMemoryObjectStore()


@pytest.fixture
def repo(clock) -> InMemoryMetadataRepo:
    return InMemoryMetadataRepo(clock=clock)


@pytest.fixture
def bus() -> InMemoryEventBus:
    return InMemoryEventBus()


@pytest.fixture
def sink() -> InMemoryAnalyticsSink:
    return InMemoryAnalyticsSink()


@pytest.fixture
def ingest(store, repo, bus, clock) -> IngestService:
    return IngestService(store, repo, bus, clock=clock, max_event_bytes=4096)


@pytest.fixture
def loader(bus, sink) -> AnalyticsLoader:
    return AnalyticsLoader(bus.subscribe("analytics"), sink)


@pytest.fixture
def relay(repo, store, bus, clock) -> OutboxRelay:
    return OutboxRelay(repo, store, bus, grace=timedelta(seconds=10), clock=clock)
