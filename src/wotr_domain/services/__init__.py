"""Application services: ingest (and its group-commit policy), analytics loading and the outbox relay."""

from ..archive import object_key_for
from .group_commit import GroupCommit
from .ingest import IngestService
from .loader import AnalyticsLoader, LoadOutcome, decode_batch
from .observer import IngestObserver, LoaderObserver, NullObserver, RelayObserver
from .relay import OutboxRelay
from .replay import Replay, ReplayReport

__all__ = [
    "AnalyticsLoader",
    "GroupCommit",
    "IngestObserver",
    "IngestService",
    "LoadOutcome",
    "LoaderObserver",
    "NullObserver",
    "OutboxRelay",
    "RelayObserver",
    "Replay",
    "ReplayReport",
    "decode_batch",
    "object_key_for",
]
