"""Everything the ingest endpoints use, as one dependency.

Litestar resolves several dependencies of a handler concurrently in a task group, which
costs tens of microseconds per request; the ingest endpoints (the hot path) take this one
object instead, built once per application.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wotr_domain.services import GroupCommit, IngestService
from wotr_domain.services.group_commit import InFlightLimit

__all__ = ["IngestEdge"]


@dataclass
class IngestEdge:
    resolve_ingest: Callable[[], IngestService]
    group_commit: GroupCommit
    limits: dict[str, int]
    batch_slots: InFlightLimit
    origins: Any  # segment.OriginPolicy: which browser origins the tracking endpoints serve
    _ingest: IngestService | None = field(default=None, repr=False)

    @property
    def ingest(self) -> IngestService:
        if self._ingest is None:
            self._ingest = self.resolve_ingest()
        return self._ingest
