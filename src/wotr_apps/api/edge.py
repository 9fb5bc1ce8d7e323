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


_SHED_PATHS = frozenset({"/ingest"})


def shed_early(group_commit: GroupCommit) -> Any:
    """ASGI middleware: while the group commit is behind (`GroupCommit.overloaded`), a
    `POST /ingest` is answered 503 before routing and before its body is read, so a
    refusal costs the event loop microseconds instead of a full request's work."""
    import msgspec

    def middleware(app: Any) -> Any:
        async def shed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _SHED_PATHS:
                refused = group_commit.refuse_if_overloaded()
                if refused is not None:
                    body = msgspec.json.encode({"status_code": 503, "error": "overloaded", "detail": str(refused)})
                    retry = str(max(1, round(refused.retry_after)))
                    await send({"type": "http.response.start", "status": 503, "headers": [
                        (b"content-type", b"application/json"), (b"retry-after", retry.encode()),
                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
                    return
            await app(scope, receive, send)

        return shed

    return middleware
