"""`Platform` and `AsyncPlatform`: the container of one embedded wotr, behind a small API.

A platform is what `wotr serve` runs, minus HTTP: the adapters of the profile, the ingest
service and, on the profiles without servers, the consumer and relay threads (so analytics
rows appear as they do behind the API). Events given as mappings are validated exactly as
HTTP bodies are (same decoder, same limits), so an embedding service and the API accept
and refuse the same events.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from wotr_apps.container import build_container
from wotr_apps.settings import VARIABLES, Settings
from wotr_domain.codec import decode_request
from wotr_domain.errors import ConfigError, WotrError
from wotr_domain.models import AnalyticsRow, EventMetadata, IngestRequest, Receipt
from wotr_domain.services import GroupCommit

__all__ = ["AsyncPlatform", "Platform", "open", "open_async"]

# Setting name -> environment variable, e.g. "data_dir" -> WOTR_DATA_DIR, "kafka_topic" -> KAFKA_TOPIC.
_SETTING_VARIABLES = {var.target.replace(".", "_"): var.name for var in VARIABLES if var.name != "WOTR_PROFILE"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_for(profile: str | None = None, env: Mapping[str, str] | None = None, **settings: Any) -> Settings:
    """Settings from `env` (default: the process environment) with `settings` on top, each
    parsed and checked as its environment variable would be."""
    merged = dict(os.environ if env is None else env)
    for name, value in settings.items():
        variable = _SETTING_VARIABLES.get(name)
        if variable is None:
            raise ConfigError(name, f"is not a wotr setting (known: {', '.join(sorted(_SETTING_VARIABLES))})")
        merged[variable] = _text(value)
    try:
        return Settings.from_env(merged, profile=profile)
    except ConfigError as e:
        named = {v: k for k, v in _SETTING_VARIABLES.items()}.get(e.variable)
        if named is not None and named in settings:
            raise ConfigError(named, e.problem) from e
        raise


def _event(payload: Mapping[str, Any], **fields: Any) -> IngestRequest:
    """One event from `ingest`'s arguments, checked as an HTTP body would be."""
    return _request({"payload": dict(payload), **{k: v for k, v in fields.items() if v is not None}})


def _request(event: Mapping[str, Any] | IngestRequest) -> IngestRequest:
    """An HTTP-shaped event mapping checked by the API's own decoder."""
    if isinstance(event, IngestRequest):
        return decode_request(msgspec.json.encode(event))
    return decode_request(msgspec.json.encode(dict(event)))


class Platform:
    """One embedded wotr. Thread-safe; close it (or use `with`) to stop its threads and
    release its stores."""

    def __init__(self, settings: Settings, *, workers: bool | None = None) -> None:
        self.settings = settings
        self._container = build_container(settings, role="serve", with_workers=workers)
        try:
            self._container.ports()  # starts the adapters: fails here, not at the first event
            self._workers = list(self._container.serve_workers())
            for worker in self._workers:
                worker.start()
        except BaseException:
            self._container.shutdown_resources()
            raise
        self._service = self._container.ingest_service()
        self._closed = False

    def ingest(
        self,
        payload: Mapping[str, Any],
        *,
        id: str | None = None,  # noqa: A002 - the event's field is called id
        source: str | None = None,
        type: str | None = None,  # noqa: A002
        timestamp: datetime | str | None = None,
    ) -> Receipt:
        """Accept one event; `Receipt.duplicate` is True for a repeated id with the same content."""
        return self._service.ingest(_event(payload, id=id, source=source, type=type, timestamp=timestamp))

    def ingest_many(self, events: Iterable[Mapping[str, Any]]) -> list[Receipt | WotrError]:
        """Accept a batch (one archive object); each event is answered by its receipt or by the
        error that refused it alone. `Unavailable` is raised when nothing could be accepted."""
        items: list[IngestRequest | WotrError] = []
        for event in events:
            try:
                items.append(_request(event))
            except WotrError as e:
                items.append(e)
        return self._service.ingest_many(items)

    def get(self, event_id: str) -> EventMetadata:
        """The event's metadata: object key and line, checksum, status; `NotFound` if unknown."""
        return self._container.metadata_repo().get(event_id)

    def latest(self, limit: int = 10) -> list[AnalyticsRow]:
        """The newest analytics rows (what the consumer loaded so far)."""
        return self._container.analytics_sink().latest(limit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.stop()
        self._container.shutdown_resources()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncPlatform:
    """A `Platform` for asyncio services: concurrent `ingest` calls share archive writes
    through the group-commit ingest policy, and nothing blocks the event loop."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._commit = GroupCommit(platform._service.ingest_many)
        self._started = False

    async def _ensure_started(self) -> None:
        if not self._started:
            await self._commit.start()
            self._started = True

    async def ingest(self, payload: Mapping[str, Any], *, id: str | None = None, source: str | None = None,  # noqa: A002
                     type: str | None = None, timestamp: datetime | str | None = None) -> Receipt:  # noqa: A002
        request = _event(payload, id=id, source=source, type=type, timestamp=timestamp)
        await self._ensure_started()
        return await self._commit.submit(request)

    async def ingest_many(self, events: Iterable[Mapping[str, Any]]) -> list[Receipt | WotrError]:
        return await asyncio.to_thread(self._platform.ingest_many, list(events))

    async def get(self, event_id: str) -> EventMetadata:
        return await asyncio.to_thread(self._platform.get, event_id)

    async def latest(self, limit: int = 10) -> list[AnalyticsRow]:
        return await asyncio.to_thread(self._platform.latest, limit)

    async def close(self) -> None:
        if self._started:
            await self._commit.stop()
            self._started = False
        await asyncio.to_thread(self._platform.close)

    async def __aenter__(self) -> AsyncPlatform:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def open(profile: str | None = None, *, env: Mapping[str, str] | None = None, workers: bool | None = None,  # noqa: A001
         **settings: Any) -> Platform:
    """Start an embedded wotr: `profile` memory, embedded (default) or local; `settings` by
    name win over `env` (default: the process environment). `workers`: run the consumer and
    relay threads (default: on the profiles without servers)."""
    return Platform(settings_for(profile, env, **settings), workers=workers)


def open_async(profile: str | None = None, *, env: Mapping[str, str] | None = None, workers: bool | None = None,
               **settings: Any) -> AsyncPlatform:
    """`open` for asyncio services (start it with `async with`, or call `close()`)."""
    return AsyncPlatform(open(profile, env=env, workers=workers, **settings))
