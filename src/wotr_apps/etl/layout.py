"""Where the ETL reads and writes, and which raw dates a run selects.

The object store keys (`raw/dt=YYYY-MM-DD/<id>.json`, `curated/...`) are the same on
every store; only the root differs, and the store says where it is
(`ObjectStore.location()`: a directory's `file://` URL, a bucket's `s3://` one, read by
Spark through s3a, see `session.hadoop_url`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import date

from wotr_domain.ports import ObjectStore

from ..run_history import RUNS_PREFIX
from .session import hadoop_url

__all__ = [
    "CURATED_PREFIX",
    "REJECTED_PREFIX",
    "RUNS_PREFIX",
    "SCHEMA_MARKER",
    "Layout",
    "Selection",
    "available_dates",
    "select_dates",
]

RAW = "raw/"
CURATED_PREFIX = "curated/events"
REJECTED_PREFIX = "curated/rejected"
SCHEMA_MARKER = "curated/_schema"  # the version of the curated schema (`migrate`)
_RAW_KEY = re.compile(r"^raw/dt=(\d{4}-\d{2}-\d{2})/([^/]+)$")


@dataclass(frozen=True, slots=True)
class Layout:
    """The store's root as Spark addresses it (`file:///...` or `s3a://bucket`)."""

    root: str

    @classmethod
    def for_store(cls, store: ObjectStore) -> Layout:
        """The layout of `store`'s keys, at its location (`NotFound` for a store without one)."""
        return cls(hadoop_url(store.location()))

    def uri(self, key: str) -> str:
        return f"{self.root}/{key.strip('/')}"

    def raw(self, day: date) -> str:
        return self.uri(f"{RAW}dt={day.isoformat()}")

    @property
    def curated(self) -> str:
        return self.uri(CURATED_PREFIX)

    @property
    def rejected(self) -> str:
        return self.uri(REJECTED_PREFIX)


@dataclass(frozen=True, slots=True)
class Selection:
    """What to process: one date, a date and every later one, or (neither) all dates."""

    date: date | None = None
    since: date | None = None

    def __post_init__(self) -> None:
        if self.date is not None and self.since is not None:
            raise ValueError("choose one of date and since")

    def describe(self) -> str:
        if self.date is not None:
            return f"date {self.date.isoformat()}"
        if self.since is not None:
            return f"since {self.since.isoformat()}"
        return "all dates"


def available_dates(store: ObjectStore, day: date | None = None) -> dict[date, int]:
    """Raw objects per date, from the store's listing (hidden `.`/`_` names skipped, as Spark does)."""
    prefix = f"{RAW}dt={day.isoformat()}/" if day is not None else f"{RAW}dt="
    counts: Counter[date] = Counter()
    for key in store.list(prefix):
        m = _RAW_KEY.match(key)
        if m is None or m[2].startswith((".", "_")):
            continue
        try:
            counts[date.fromisoformat(m[1])] += 1
        except ValueError:  # dt=2026-13-40: not a date folder of ours
            continue
    return dict(sorted(counts.items()))


def select_dates(available: dict[date, int], selection: Selection, today: date) -> list[date]:
    """The dates to read: those with raw objects that the selection covers (up to today)."""
    if selection.date is not None:
        return [selection.date] if selection.date in available else []
    start = selection.since or date.min
    end = today if selection.since is not None else date.max
    return [d for d in sorted(available) if start <= d <= end]
