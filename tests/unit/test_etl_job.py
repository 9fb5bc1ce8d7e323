"""The ETL on local files: raw objects archived by the real ingest service, curated
Parquet read back with pyarrow. One SparkSession serves the whole test session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryEventBus, InMemoryMetadataRepo
from wotr_apps.etl.cli import main as etl_main
from wotr_apps.etl.job import EtlJob
from wotr_apps.etl.layout import Layout, Selection
from wotr_apps.etl.session import spark_session
from wotr_apps.settings import Settings
from wotr_domain.codec import encode
from wotr_domain.models import Event, IngestRequest
from wotr_domain.services import IngestService

D1, D2, D3 = date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)

CURATED_TYPES = {
    "event_id": pa.string(),
    "received_at": pa.timestamp("us", tz="UTC"),
    "event_time": pa.timestamp("us", tz="UTC"),
    "source": pa.string(),
    "type": pa.string(),
    "payload": pa.string(),
    "object_key": pa.string(),
    "dt": pa.date32(),
}


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    session = spark_session()
    yield session
    session.stop()


class Archive:
    """A data dir whose raw objects come from the real `IngestService` on the filesystem store."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(profile="embedded", data_dir=data_dir)
        self.root = data_dir / "objects" / self.settings.bucket
        self.store = FilesystemObjectStore(self.root)
        self.store.start()
        self.now = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
        self.service = IngestService(self.store, InMemoryMetadataRepo(), InMemoryEventBus(), clock=lambda: self.now)
        self.events: dict[str, Event] = {}

    def ingest(self, day: date, n: int, **fields: Any) -> list[str]:
        ids = []
        for i in range(n):
            self.now = datetime(day.year, day.month, day.day, 1 + i % 20, i % 60, tzinfo=UTC) + timedelta(microseconds=i)
            receipt = self.service.ingest(IngestRequest(payload={"n": i, "day": day.isoformat(), "tags": ["a", "é"]},
                                                        **fields))
            self.events[receipt.id] = Event(id=receipt.id, received_at=self.now, payload={"n": i, "day": day.isoformat(),
                                            "tags": ["a", "é"]}, **fields)
            ids.append(receipt.id)
        return ids

    def job(self, spark: Any) -> EtlJob:
        return EtlJob(spark, self.store, Layout.for_settings(self.settings))

    def curated(self) -> pa.Table:
        return _read(self.root / "curated" / "events")

    def rejected(self) -> pa.Table:
        return _read(self.root / "curated" / "rejected")

    def files(self, area: str = "events") -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in (self.root / "curated" / area).rglob("*.parquet"))


def _read(path: Path) -> pa.Table:
    partitioning = ds.partitioning(pa.schema([("dt", pa.date32())]), flavor="hive")
    return ds.dataset(path, format="parquet", partitioning=partitioning).to_table()


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r.get("event_id") or "", r["object_key"]))


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(tmp_path / "data")


def test_each_valid_event_becomes_exactly_one_curated_row_with_the_documented_schema(spark, archive):
    archive.ingest(D1, 3, source="web", type="click", timestamp=datetime(2026, 11, 23, 22, 30, tzinfo=UTC))
    archive.ingest(D2, 2)

    run = archive.job(spark).run()

    assert (run.status, run.dates, run.files_found) == ("succeeded", [D1.isoformat(), D2.isoformat()], 5)
    assert (run.rows_read, run.rows_written, run.rows_rejected, run.duplicates) == (5, 5, 0, 0)
    table = archive.curated()
    assert {f.name: f.type for f in table.schema} == CURATED_TYPES
    rows = _rows(table)
    assert [r["event_id"] for r in rows] == sorted(archive.events)
    for row in rows:
        event = archive.events[row["event_id"]]
        assert row["received_at"] == event.received_at
        assert row["event_time"] == event.timestamp
        assert (row["source"], row["type"]) == (event.source, event.type)
        assert json.loads(row["payload"]) == event.payload
        assert row["object_key"] == f"raw/dt={row['dt'].isoformat()}/{event.id}.json"
        assert row["dt"] == event.received_at.date()
    assert archive.files() == sorted(archive.files())  # one file per date
    assert [f.split("/")[2] for f in archive.files()] == ["dt=2026-11-24", "dt=2026-11-25"]


def test_a_second_run_changes_nothing(spark, archive):
    archive.ingest(D1, 4)
    archive.ingest(D2, 3)
    job = archive.job(spark)
    job.run()
    before, files = _rows(archive.curated()), archive.files()

    again = job.run()

    assert (again.rows_read, again.rows_written) == (7, 7)
    assert _rows(archive.curated()) == before
    assert len(archive.files()) == len(files) == 2


def test_rerunning_a_date_after_new_events_replaces_only_that_date(spark, archive):
    archive.ingest(D1, 2)
    first_d2 = archive.ingest(D2, 2)
    job = archive.job(spark)
    job.run()
    d1_files = [f for f in archive.files() if "dt=2026-11-24" in f]
    later_d2 = archive.ingest(D2, 3)  # more events received on D2, then only D2 is processed again

    run = job.run(Selection(date=D2))

    assert (run.dates, run.rows_read, run.rows_written) == ([D2.isoformat()], 5, 5)
    rows = _rows(archive.curated())
    assert sorted(r["event_id"] for r in rows if r["dt"] == D2) == sorted(first_d2 + later_d2)
    assert len([r for r in rows if r["dt"] == D1]) == 2
    assert [f for f in archive.files() if "dt=2026-11-24" in f] == d1_files  # D1 not rewritten
    assert len([f for f in archive.files() if "dt=2026-11-25" in f]) == 1


def test_since_selects_that_date_and_later_and_reads_no_other_prefix(spark, archive):
    archive.ingest(D1, 1)
    archive.ingest(D2, 2)
    archive.ingest(D3, 1)
    archive.store.put(f"raw/dt={D1.isoformat()}/broken.json", b"{not json")  # would be rejected if read

    run = archive.job(spark).run(Selection(since=D2))

    assert (run.dates, run.files_found, run.rows_read, run.rows_rejected) == (["2026-11-25", "2026-11-26"], 3, 3, 0)
    assert {r["dt"] for r in archive.curated().to_pylist()} == {D2, D3}
    assert not (archive.root / "curated" / "rejected").exists()


def test_bad_objects_are_rejected_with_their_reason_and_do_not_fail_the_run(spark, archive):
    good = archive.ingest(D1, 2)
    day = f"raw/dt={D1.isoformat()}"
    ok = {"id": "x", "received_at": "2026-11-24T10:00:00Z", "payload": {"a": 1}}
    bad = {
        "torn.json": (b'{"id": "t1", "received_at": "2026-11-24T10:00:00Z", "pay', "not valid JSON"),
        "array.json": (b"[1, 2]", "not valid JSON"),
        "garbled.json": (b"\xff\xfe{\"id\": 1", "not valid JSON"),
        "no-id.json": (json.dumps(ok | {"id": None}).encode(), "missing id"),
        "no-received.json": (json.dumps({"id": "r1", "payload": {}}).encode(), "missing received_at"),
        "bad-received.json": (json.dumps(ok | {"id": "r2", "received_at": "yesterday"}).encode(),
                              "received_at is not a timestamp"),
        "no-payload.json": (json.dumps({"id": "p1", "received_at": "2026-11-24T10:00:00Z"}).encode(), "missing payload"),
        "scalar-payload.json": (json.dumps(ok | {"id": "p2", "payload": "text"}).encode(), "payload is not a JSON object"),
        "bad-time.json": (json.dumps(ok | {"id": "p3", "timestamp": "soon"}).encode(), "timestamp is not a timestamp"),
        "other-day.json": (json.dumps(ok | {"id": "p4", "received_at": "2026-11-20T10:00:00Z"}).encode(),
                           "received_at is not on the date of its object key"),
    }
    for name, (body, _) in bad.items():
        archive.store.put(f"{day}/{name}", body)

    run = archive.job(spark).run()

    assert (run.status, run.rows_read, run.rows_written, run.rows_rejected) == ("succeeded", 12, 2, 10)
    assert sorted(r["event_id"] for r in archive.curated().to_pylist()) == sorted(good)
    rejected = {r["object_key"]: r for r in archive.rejected().to_pylist()}
    assert {k: r["reason"] for k, r in rejected.items()} == {f"{day}/{n}": reason for n, (_, reason) in bad.items()}
    assert {k: r["raw"] for k, r in rejected.items()} == {f"{day}/{n}": body.decode(errors="replace")
                                                   for n, (body, _) in bad.items()}
    assert {(r["run_id"], r["dt"]) for r in rejected.values()} == {(run.run_id, D1)}


def test_a_date_that_no_longer_yields_rows_loses_its_old_partitions(spark, archive):
    (event_id,) = archive.ingest(D1, 1)
    key = f"raw/dt={D1.isoformat()}/{event_id}.json"
    archive.store.put(f"raw/dt={D1.isoformat()}/junk.json", b"junk")
    job = archive.job(spark)
    job.run()
    assert len(archive.files("events")) == len(archive.files("rejected")) == 1
    archive.store.put(key, b"junk too")  # the valid event is now corrupt; the junk is fixed
    archive.store.put(f"raw/dt={D1.isoformat()}/junk.json", encode(archive.events[event_id]))

    run = job.run()

    assert (run.rows_written, run.rows_rejected) == (1, 1)
    rejected = archive.rejected().to_pylist()
    assert [r["object_key"] for r in rejected] == [key]
    archive.store.put(key, encode(archive.events[event_id]))  # both valid: same id twice
    run = job.run()
    assert (run.rows_written, run.rows_rejected, run.duplicates) == (1, 0, 1)
    assert archive.files("rejected") == []


def test_duplicate_ids_in_a_run_keep_the_earliest_reception(spark, archive):
    (event_id,) = archive.ingest(D1, 1)
    first = archive.events[event_id]
    later = Event(id=first.id, received_at=first.received_at + timedelta(hours=3), payload={"replayed": True})
    earlier = Event(id=first.id, received_at=first.received_at - timedelta(minutes=5), payload={"original": True})
    archive.store.put(f"raw/dt={D1.isoformat()}/{event_id}-later.json", encode(later))
    archive.store.put(f"raw/dt={D1.isoformat()}/{event_id}-earlier.json", encode(earlier))

    run = archive.job(spark).run()

    assert (run.rows_read, run.rows_written, run.duplicates) == (3, 1, 2)
    (row,) = archive.curated().to_pylist()
    assert (row["received_at"], json.loads(row["payload"])) == (earlier.received_at, {"original": True})
    assert row["object_key"].endswith("-earlier.json")


def test_runs_are_recorded_in_the_history(spark, archive):
    archive.ingest(D1, 2)
    job = archive.job(spark)
    done = job.run()
    nothing = job.run(Selection(date=D3))

    runs = job.history.runs()

    assert [r.run_id for r in runs] == [done.run_id, nothing.run_id]
    assert (runs[0].status, runs[0].dates, runs[0].rows_read, runs[0].rows_written) == ("succeeded", ["2026-11-24"], 2, 2)
    assert runs[0].duration_seconds > 0 and runs[0].output.endswith("/curated/events")
    assert (runs[1].status, runs[1].dates, runs[1].rows_read) == ("nothing to do", [], 0)
    assert sorted(archive.store.list("curated/_runs/")) == [f"curated/_runs/{r.run_id}.json" for r in runs]


def test_the_cli_runs_the_job_and_shows_the_history_on_the_embedded_profile(spark, archive, monkeypatch, capsys):
    archive.ingest(D2, 3)
    archive.store.put(f"raw/dt={D2.isoformat()}/bad.json", b"?")
    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(archive.settings.data_dir))

    assert etl_main(["--date", D2.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "dt=2026-11-25  read         4  written         3  rejected       1" in out
    assert "done in" in out and "3 written, 1 rejected" in out
    assert f"curated   file://{archive.root}/curated/events" in out
    assert len(archive.curated()) == 3

    assert etl_main(["--history"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["RUN", "STARTED", "(UTC)", "STATUS", "DATES", "READ", "WRITTEN", "REJECTED", "DUPL",
                                "DURATION"]
    assert table[1].split()[3:8] == ["succeeded", "2026-11-25", "4", "3", "1"]


def test_a_batch_object_yields_one_row_per_line(spark, archive):
    archive.now = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    results = archive.service.ingest_batch([IngestRequest(payload={"b": i}, source="bulk") for i in range(25)])
    single = archive.ingest(D2, 2)
    (key,) = {r.object_key for r in results}
    assert key.endswith(".ndjson")
    archive.job(spark).run(Selection(date=D2))
    rows = _rows(archive.curated())
    assert len(rows) == 27
    batch_rows = [r for r in rows if r["object_key"] == key]
    assert sorted(r["event_id"] for r in batch_rows) == sorted(r.id for r in results)
    assert sorted(json.loads(r["payload"])["b"] for r in batch_rows) == list(range(25))
    assert {r["event_id"] for r in rows} - {r.id for r in results} == set(single)
