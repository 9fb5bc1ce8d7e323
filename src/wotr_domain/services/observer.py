"""Hooks through which services report what they did, for metrics; no-ops by default."""

from __future__ import annotations

from typing import Protocol

__all__ = ["IngestObserver", "LoaderObserver", "NullObserver", "RelayObserver"]


class IngestObserver(Protocol):
    def accepted(self, events: int, size_bytes: int) -> None: ...
    def duplicates(self, events: int) -> None: ...
    def rejected(self, events: int) -> None: ...
    def failed(self, events: int) -> None: ...
    def published(self, events: int) -> None: ...
    def publish_deferred(self, events: int) -> None: ...


class LoaderObserver(Protocol):
    def batch(self, size: int) -> None: ...
    def loaded(self, rows: int) -> None: ...
    def dead_lettered(self, messages: int) -> None: ...


class RelayObserver(Protocol):
    def relayed(self, events: int) -> None: ...
    def fault(self, kind: str) -> None:
        """An event's archived bytes are `missing` or fail their `checksum`; not published."""


class NullObserver:
    """Observes nothing; the default for every service."""

    def __getattr__(self, name: str):  # any hook, any arguments, no effect
        return _ignore


def _ignore(*_args: object, **_kwargs: object) -> None:
    return None
