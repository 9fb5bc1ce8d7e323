"""The run history: one small JSON object per ETL run, next to the curated output.

Runs are kept at `curated/_runs/<run id>.json` through the object store port, so the
same code serves a directory (embedded) and a bucket (local). Run ids are UUIDv7, so
the keys list in start order. A run is written when it starts (`running`) and again
when it ends, so a run that died shows up as `running` forever instead of vanishing.

It lives outside `wotr_apps.etl` so that its readers (the API, telemetry) need neither
the ETL package nor pyspark: the ETL writes it, everyone else only reads it.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from wotr_domain.errors import NotFound
from wotr_domain.ports import ObjectStore

__all__ = ["RUNS_PREFIX", "RunHistory", "RunRecord", "render_table"]

RUNS_PREFIX = "curated/_runs/"


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What one run did: selection, counts, duration and outcome."""

    run_id: str
    started_at: datetime
    status: str  # running | succeeded | failed | nothing to do
    selection: str
    dates: list[str] = []
    files_found: int = 0
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    duplicates: int = 0
    orphans: int = 0  # objects or lines no metadata row names: not events, never curated
    missing: int = 0  # metadata rows whose object or line is not in the archive
    duration_seconds: float = 0.0
    output: str = ""
    error: str | None = None


_decoder = msgspec.json.Decoder(RunRecord)
_encoder = msgspec.json.Encoder()


class RunHistory:
    """Records runs in an object store and reads them back, oldest first."""

    def __init__(self, store: ObjectStore, prefix: str = RUNS_PREFIX) -> None:
        self._store = store
        self._prefix = prefix

    def record(self, run: RunRecord) -> None:
        self._store.put(f"{self._prefix}{run.run_id}.json", _encoder.encode(run), "application/json")

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """The last `limit` runs (all when None), oldest first; unreadable records skipped."""
        keys = [k for k in self._store.list(self._prefix) if k.endswith(".json")]
        if limit is not None:
            keys = keys[-limit:] if limit > 0 else []
        out = []
        for key in keys:
            try:
                out.append(_decoder.decode(self._store.get(key)))
            except (NotFound, msgspec.DecodeError):  # deleted meanwhile, or not ours
                continue
        return out


def _dates(dates: list[str]) -> str:
    if not dates:
        return "-"
    if len(dates) == 1:
        return dates[0]
    return f"{dates[0]}..{dates[-1]} ({len(dates)})"


def render_table(runs: list[RunRecord]) -> str:
    """A fixed-width table, one line per run, for `wotr etl --history`."""
    if not runs:
        return "no ETL runs recorded yet"
    header = ("RUN", "STARTED (UTC)", "STATUS", "DATES", "READ", "WRITTEN", "REJECTED", "DUPL", "ORPHANS", "MISSING",
              "DURATION")
    rows = [
        (
            r.run_id,
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            r.status,
            _dates(r.dates),
            f"{r.rows_read:,}",
            f"{r.rows_written:,}",
            f"{r.rows_rejected:,}",
            f"{r.duplicates:,}",
            f"{r.orphans:,}",
            f"{r.missing:,}",
            f"{r.duration_seconds:.1f}s",
        )
        for r in runs
    ]
    numeric = {4, 5, 6, 7, 8, 9, 10}
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in numeric else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    failed = [r for r in runs if r.error]
    for r in failed[-3:]:
        lines.append(f"{r.run_id}: {r.error}")
    return "\n".join(lines)
