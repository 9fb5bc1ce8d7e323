"""One ETL run: select raw dates, verify against metadata, classify, write Parquet.

Integrity first: for each selected date the job asks the metadata repository for the
events received that day, and takes only the bytes a metadata row names whose SHA-256
is the row's checksum (`transform.verify`). A mismatch is rejected (`checksum
mismatch`), bytes no row names are counted as orphans, rows whose bytes are gone as
missing; none of them is ever curated.

Idempotent per date: the output is written with dynamic partition overwrite, so a run
replaces exactly the `dt=` partitions it read, and a date that now yields no rows has
its old partition removed. Every run is recorded in the run history.

Before anything else a run brings the curated Parquet already written to the current
curated schema (`migrate.migrate_curated`: a marker object, then nothing to do).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from wotr_domain.ids import new_event_id
from wotr_domain.models import ArchivedEvent
from wotr_domain.ports import MetadataRepo, ObjectStore

from ..run_history import RunHistory, RunRecord
from .layout import CURATED_PREFIX, REJECTED_PREFIX, Layout, Selection, available_dates, select_dates
from .migrate import migrate_curated
from .transform import (
    DUPLICATE,
    MISSING,
    ORPHAN,
    REJECTED,
    STATUSES,
    WRITTEN,
    classify,
    curated_rows,
    metadata_frame,
    metadata_rows,
    raw_objects,
    rejected_rows,
    verify,
)

__all__ = ["EtlJob"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EtlJob:
    """Runs the ETL over one object store root and its metadata with a given SparkSession."""

    def __init__(
        self,
        spark: Any,
        store: ObjectStore,
        repo: MetadataRepo,
        layout: Layout,
        *,
        say: Callable[[str], None] = lambda _m: None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._spark = spark
        self._store = store
        self._repo = repo
        self._layout = layout
        self._say = say
        self._clock = clock
        self.history = RunHistory(store)

    def run(self, selection: Selection = Selection()) -> RunRecord:
        """Process the selected dates and return the run's record (also stored)."""
        started, t0 = self._clock(), time.monotonic()
        migrate_curated(self._store, say=self._say)
        run = RunRecord(run_id=new_event_id(), started_at=started, status="running",
                        selection=selection.describe(), output=self._layout.curated)
        available = available_dates(self._store, selection.date)
        dates = select_dates(available, selection, started.date())
        files = sum(available[d] for d in dates)
        run = msgspec.structs.replace(run, dates=[d.isoformat() for d in dates], files_found=files)
        if not dates:
            self._say(f"no raw objects for {selection.describe()} under {self._layout.uri('raw')}")
            run = msgspec.structs.replace(run, status="nothing to do", duration_seconds=time.monotonic() - t0)
            self.history.record(run)
            return run
        self._say(f"run {run.run_id}: {len(dates)} date(s) {_span(dates)}, {files:,} raw object(s)")
        self.history.record(run)
        try:
            counts = self._process(dates, run.run_id, started)
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"[:2000]
            self.history.record(
                msgspec.structs.replace(run, status="failed", error=error, duration_seconds=time.monotonic() - t0)
            )
            raise
        total = {s: sum(n for (_, st), n in counts.items() if st == s) for s in STATUSES}
        run = msgspec.structs.replace(
            run,
            status="succeeded",
            rows_read=sum(n for s, n in total.items() if s != MISSING),
            rows_written=total[WRITTEN],
            rows_rejected=total[REJECTED],
            duplicates=total[DUPLICATE],
            orphans=total[ORPHAN],
            missing=total[MISSING],
            duration_seconds=time.monotonic() - t0,
        )
        self.history.record(run)
        return run

    def _process(self, dates: list[date], run_id: str, started: datetime) -> dict[tuple[date, str], int]:
        from pyspark import StorageLevel

        self._say("reading metadata")
        rows = metadata_rows((d, m) for d in dates for m in self._metadata(d))
        self._say(f"  {sum(len(r[2]) for r in rows):,} event(s) in {len(rows):,} object(s)")
        metadata = metadata_frame(self._spark, rows)
        self._say("reading, verifying and parsing raw objects")
        objects = raw_objects(self._spark, [self._layout.raw(d) for d in dates])
        classified = classify(verify(objects, metadata)).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = {(r["dt"], r["status"]): r["count"] for r in classified.groupBy("dt", "status").count().collect()}
            for d in dates:
                self._say(
                    f"  dt={d.isoformat()}  read {sum(n for (k, s), n in counts.items() if k == d and s != MISSING):>9,}"
                    f"  written {counts.get((d, WRITTEN), 0):>9,}  rejected {counts.get((d, REJECTED), 0):>7,}"
                    f"  duplicates {counts.get((d, DUPLICATE), 0):>6,}  orphans {counts.get((d, ORPHAN), 0):>6,}"
                    f"  missing {counts.get((d, MISSING), 0):>6,}"
                )
            self._say(f"writing curated Parquet to {self._layout.curated}")
            self._write(curated_rows(classified), self._layout.curated, CURATED_PREFIX, dates,
                        [d for d in dates if counts.get((d, WRITTEN), 0)], "received_at")
            rejected_dates = [d for d in dates if counts.get((d, REJECTED), 0)]
            if rejected_dates:
                self._say(f"writing rejected objects to {self._layout.rejected}")
            self._write(rejected_rows(classified, run_id, started), self._layout.rejected, REJECTED_PREFIX, dates,
                        rejected_dates, "object_key")
        finally:
            classified.unpersist()
        return counts

    def _metadata(self, day: date) -> Iterator[ArchivedEvent]:
        """Where the events received on `day` (UTC) are archived, with their checksums."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return self._repo.archived_between(start, start + timedelta(days=1))

    def _write(self, frame: Any, uri: str, key: str, dates: list[date], filled: list[date], order: str) -> None:
        """Overwrite the partitions of `filled`; empty the other selected dates' partitions."""
        if filled:
            (
                frame.repartition("dt")  # one file per date
                .sortWithinPartitions("dt", order)
                .write.mode("overwrite")
                .option("partitionOverwriteMode", "dynamic")
                .partitionBy("dt")
                .parquet(uri)
            )
        for d in dates:
            if d not in filled:
                for stale in list(self._store.list(f"{key}/dt={d.isoformat()}/")):
                    self._store.delete(stale)


def _span(dates: list[date]) -> str:
    return dates[0].isoformat() if len(dates) == 1 else f"{dates[0].isoformat()}..{dates[-1].isoformat()}"

