"""The ETL on local files: raw objects archived by the real ingest service, their metadata
in the embedded profile's SQLite repository, curated Parquet read back with pyarrow. One
SparkSession serves the whole test session.

Objects the tests write by hand get a metadata row too (with the SHA-256 of their
bytes), unless the test is about objects without one (orphans)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from dependency_injector import providers

from wotr_adapters.filesystem import FilesystemObjectStore
from wotr_adapters.memory import InMemoryEventBus
from wotr_adapters.sqlite_metadata import SqliteMetadataRepo
from wotr_apps.etl.cli import main as etl_main
from wotr_apps.etl.job import EtlJob
from wotr_apps.etl.layout import Layout, Selection
from wotr_apps.etl.session import spark_session
from wotr_apps.settings import Settings
from wotr_domain.codec import encode, sha256_hex
from wotr_domain.models import Event, EventMetadata, IngestRequest
from wotr_domain.services import IngestService

D1, D2, D3 = date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 26)

CURATED_TYPES = {
    "id": pa.string(),
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
    """A data dir whose raw objects come from the real `IngestService` on the filesystem
    store, with their metadata where the embedded profile keeps it (so `wotr etl` finds it)."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(profile="embedded", data_dir=data_dir)
        self.root = data_dir / "objects" / self.settings.bucket
        self.store = FilesystemObjectStore(self.root)
        self.store.start()
        self.repo = SqliteMetadataRepo(data_dir / "metadata.db")
        self.repo.start()
        self.now = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
        self.service = IngestService(self.store, self.repo, InMemoryEventBus(), clock=lambda: self.now)
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

    def put(self, key: str, body: bytes, event_id: str | None = None, *, line: int | None = None,
            record: bool = True) -> None:
        """Write an object by hand; with `record`, also the metadata row naming it (or its `line`)."""
        self.store.put(key, body)
        if record:
            self.record(key, body if line is None else body.split(b"\n")[line], event_id or key, line=line)

    def record(self, key: str, event_bytes: bytes, event_id: str, *, line: int | None = None) -> None:
        """The metadata row of an event at `key` (and `line`) whose bytes are `event_bytes`."""
        day = date.fromisoformat(key.split("/")[1].removeprefix("dt="))
        received = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
        (done,) = self.repo.record([EventMetadata(id=event_id, object_key=key, line=line, size=len(event_bytes),
                                                  checksum=sha256_hex(event_bytes), received_at=received)])
        assert done.created

    def batch(self, day: date, n: int, **fields: Any) -> tuple[str, list[str]]:
        """`n` events ingested together: one NDJSON object; its key and the ids in line order."""
        self.now = datetime(day.year, day.month, day.day, 9, 30, tzinfo=UTC)
        results = self.service.ingest_batch([IngestRequest(payload={"b": i}, **fields) for i in range(n)])
        (key,) = {r.object_key for r in results}
        assert key.endswith(".ndjson") and [r.line for r in results] == list(range(n))
        return key, [r.id for r in results]

    def job(self, spark: Any) -> EtlJob:
        return EtlJob(spark, self.store, self.repo, Layout.for_store(self.store))

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
    return sorted(table.to_pylist(), key=lambda r: (r.get("id") or "", r["object_key"]))


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = Archive(tmp_path / "data")
    yield archive
    archive.repo.close()


def test_each_valid_event_becomes_exactly_one_curated_row_with_the_documented_schema(spark, archive):
    archive.ingest(D1, 3, source="web", type="click", timestamp=datetime(2026, 11, 23, 22, 30, tzinfo=UTC))
    archive.ingest(D2, 2)

    run = archive.job(spark).run()

    assert (run.status, run.dates, run.files_found) == ("succeeded", [D1.isoformat(), D2.isoformat()], 5)
    assert (run.rows_read, run.rows_written, run.rows_rejected, run.duplicates) == (5, 5, 0, 0)
    table = archive.curated()
    assert {f.name: f.type for f in table.schema} == CURATED_TYPES
    rows = _rows(table)
    assert [r["id"] for r in rows] == sorted(archive.events)
    for row in rows:
        event = archive.events[row["id"]]
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
    assert sorted(r["id"] for r in rows if r["dt"] == D2) == sorted(first_d2 + later_d2)
    assert len([r for r in rows if r["dt"] == D1]) == 2
    assert [f for f in archive.files() if "dt=2026-11-24" in f] == d1_files  # D1 not rewritten
    assert len([f for f in archive.files() if "dt=2026-11-25" in f]) == 1


def test_since_selects_that_date_and_later_and_reads_no_other_prefix(spark, archive):
    archive.ingest(D1, 1)
    archive.ingest(D2, 2)
    archive.ingest(D3, 1)
    archive.put(f"raw/dt={D1.isoformat()}/broken.json", b"{not json")  # would be rejected if read

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
        archive.put(f"{day}/{name}", body)  # recorded with the checksum of these bytes: verified, then parsed

    run = archive.job(spark).run()

    assert (run.status, run.rows_read, run.rows_written, run.rows_rejected) == ("succeeded", 12, 2, 10)
    assert sorted(r["id"] for r in archive.curated().to_pylist()) == sorted(good)
    rejected = {r["object_key"]: r for r in archive.rejected().to_pylist()}
    assert {k: r["reason"] for k, r in rejected.items()} == {f"{day}/{n}": reason for n, (_, reason) in bad.items()}
    assert {k: r["raw"] for k, r in rejected.items()} == {f"{day}/{n}": body.decode(errors="replace")
                                                   for n, (body, _) in bad.items()}
    assert {(r["run_id"], r["dt"]) for r in rejected.values()} == {(run.run_id, D1)}


def test_a_date_that_no_longer_yields_rows_loses_its_old_partitions(spark, archive):
    (event_id,) = archive.ingest(D1, 1)
    key = f"raw/dt={D1.isoformat()}/{event_id}.json"
    junk = f"raw/dt={D1.isoformat()}/junk.json"
    archive.put(junk, b"junk")
    job = archive.job(spark)
    job.run()
    assert len(archive.files("events")) == len(archive.files("rejected")) == 1
    archive.store.put(key, b"junk too")  # the event's bytes are overwritten: no curated row is left
    archive.store.delete(junk)  # and the rejected object is gone

    run = job.run()

    assert (run.rows_written, run.rows_rejected, run.missing) == (0, 1, 1)
    assert archive.files("events") == []
    assert [(r["object_key"], r["reason"]) for r in archive.rejected().to_pylist()] == [(key, "checksum mismatch")]
    archive.store.put(key, encode(archive.events[event_id]))  # the accepted bytes are back
    run = job.run()
    assert (run.rows_written, run.rows_rejected, run.missing) == (1, 0, 1)
    assert archive.files("rejected") == [] and len(archive.files("events")) == 1


def test_duplicate_ids_in_a_run_keep_the_earliest_reception(spark, archive):
    """The ingest service never records an id twice; should two metadata rows name bytes
    carrying one id (rows written by something else), the earliest reception is kept."""
    (event_id,) = archive.ingest(D1, 1)
    first = archive.events[event_id]
    later = Event(id=first.id, received_at=first.received_at + timedelta(hours=3), payload={"replayed": True})
    earlier = Event(id=first.id, received_at=first.received_at - timedelta(minutes=5), payload={"original": True})
    archive.put(f"raw/dt={D1.isoformat()}/{event_id}-later.json", encode(later), f"{event_id}-later")
    archive.put(f"raw/dt={D1.isoformat()}/{event_id}-earlier.json", encode(earlier), f"{event_id}-earlier")

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
    archive.put(f"raw/dt={D2.isoformat()}/bad.json", b"?")
    archive.put(f"raw/dt={D2.isoformat()}/stray.json", b"{}", record=False)
    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(archive.settings.data_dir))

    assert etl_main(["--date", D2.isoformat()]) == 0
    out = capsys.readouterr().out
    assert ("dt=2026-11-25  read         5  written         3  rejected       1  duplicates      0  orphans      1"
            "  missing      0") in out
    assert "done in" in out and "3 written, 1 rejected, 0 duplicate(s), 1 orphan(s), 0 missing" in out
    assert f"curated   file://{archive.root}/curated/events" in out
    assert len(archive.curated()) == 3

    assert etl_main(["--history"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["RUN", "STARTED", "(UTC)", "STATUS", "DATES", "READ", "WRITTEN", "REJECTED", "DUPL",
                                "ORPHANS", "MISSING", "DURATION"]
    assert table[1].split()[3:10] == ["succeeded", "2026-11-25", "5", "3", "1", "0", "1"]


# -- integrity: only the bytes a metadata row names and whose checksum it holds ----------


def test_good_single_and_batch_objects_of_a_day_are_all_curated(spark, archive):
    key, batch_ids = archive.batch(D2, 25, source="bulk")
    single = archive.ingest(D2, 2)
    chosen = archive.service.ingest(IngestRequest(id="client-7", payload={"c": 1}))  # key <id>.<attempt>.json

    run = archive.job(spark).run(Selection(date=D2))

    assert (run.rows_read, run.rows_written, run.rows_rejected, run.orphans, run.missing) == (28, 28, 0, 0, 0)
    rows = _rows(archive.curated())
    assert sorted(r["id"] for r in rows) == sorted(batch_ids + single + ["client-7"])
    batch_rows = [r for r in rows if r["object_key"] == key]
    assert sorted(json.loads(r["payload"])["b"] for r in batch_rows) == list(range(25))
    assert {r["source"] for r in batch_rows} == {"bulk"}
    assert [r["object_key"] for r in rows if r["id"] == "client-7"] == [chosen.object_key]


def test_lines_are_numbered_as_the_archive_numbers_them_blank_ones_included(spark, archive):
    key = f"raw/dt={D1.isoformat()}/batch-hand.ndjson"
    events = [Event(id=f"h{i}", received_at=datetime(2026, 11, 24, 10, i, tzinfo=UTC), payload={"i": i})
              for i in range(3)]
    body = b"\n".join([encode(events[0]), b"", encode(events[1]), b"  ", encode(events[2])]) + b"\n"
    archive.store.put(key, body)
    for line, event in zip((0, 2, 4), events, strict=True):
        archive.record(key, encode(event), event.id, line=line)

    run = archive.job(spark).run()

    assert (run.rows_written, run.rows_rejected, run.orphans, run.missing) == (3, 0, 1, 0)  # the "  " line
    assert sorted(r["id"] for r in archive.curated().to_pylist()) == ["h0", "h1", "h2"]


def test_objects_and_lines_no_metadata_row_names_are_orphans_not_curated(spark, archive):
    good = archive.ingest(D1, 2)
    stray = Event(id="stray-1", received_at=datetime(2026, 11, 24, 11, 0, tzinfo=UTC), payload={"s": 1})
    archive.put(f"raw/dt={D1.isoformat()}/{stray.id}.json", encode(stray), record=False)  # an orphan object
    archive.put(f"raw/dt={D1.isoformat()}/batch-stray.ndjson", encode(stray) + b"\n{}\n", record=False)  # another
    key, batch_ids = archive.batch(D1, 3)
    extra = Event(id="stray-2", received_at=datetime(2026, 11, 24, 9, 30, tzinfo=UTC), payload={"s": 2})
    archive.store.put(key, archive.store.get(key) + encode(extra) + b"\n")  # a line appended after recording

    run = archive.job(spark).run()

    assert (run.rows_read, run.rows_written, run.rows_rejected, run.orphans, run.missing) == (8, 5, 0, 3, 0)
    assert sorted(r["id"] for r in archive.curated().to_pylist()) == sorted(good + batch_ids)
    assert not (archive.root / "curated" / "rejected").exists()


def test_bytes_overwritten_after_recording_are_rejected_as_a_checksum_mismatch(spark, archive):
    (event_id, kept) = archive.ingest(D1, 2)
    key = f"raw/dt={D1.isoformat()}/{event_id}.json"
    forged = msgspec.structs.replace(archive.events[event_id], payload={"n": 999})
    archive.store.put(key, encode(forged))  # same key, other (valid) bytes
    batch_key, batch_ids = archive.batch(D1, 3)
    lines = archive.store.get(batch_key).split(b"\n")
    lines[1] = lines[1].replace(b'"b":1', b'"b":7')
    archive.store.put(batch_key, b"\n".join(lines))  # one line changed, the others intact

    run = archive.job(spark).run()

    assert (run.rows_written, run.rows_rejected, run.orphans, run.missing) == (3, 2, 0, 0)
    assert sorted(r["id"] for r in archive.curated().to_pylist()) == sorted([kept, batch_ids[0], batch_ids[2]])
    rejected = sorted((r["object_key"], r["reason"], r["raw"]) for r in archive.rejected().to_pylist())
    assert rejected == sorted([(key, "checksum mismatch", encode(forged).decode()),
                               (batch_key, "checksum mismatch", lines[1].decode())])


def test_checksums_are_of_the_bytes_not_of_their_text(spark, archive):
    """Invalid UTF-8 becomes U+FFFD in the text; the checksum is computed before that."""
    (event_id,) = archive.ingest(D1, 1)
    key = f"raw/dt={D1.isoformat()}/{event_id}.json"
    body = encode(archive.events[event_id])
    assert "é".encode() in body
    archive.store.put(key, body.replace("é".encode(), "\ufffd".encode()))  # what its text would look like
    day = f"raw/dt={D1.isoformat()}"
    garbled = {n: body.replace(event_id.encode(), n.encode()).replace("é".encode(), b"\xff") for n in ("g1", "g2")}
    for name, raw in garbled.items():
        archive.put(f"{day}/{name}.json", raw, name)  # recorded as they are: invalid UTF-8
    archive.store.put(f"{day}/g2.json", garbled["g2"].replace(b"\xff", b"\xfe"))  # the same text, other bytes

    run = archive.job(spark).run()

    assert (run.rows_written, run.rows_rejected) == (1, 2)
    (row,) = archive.curated().to_pylist()  # g1's bytes are the recorded ones
    assert (row["id"], json.loads(row["payload"])["tags"]) == ("g1", ["a", "\ufffd"])
    assert sorted((r["object_key"], r["reason"]) for r in archive.rejected().to_pylist()) == sorted([
        (f"{day}/g2.json", "checksum mismatch"), (key, "checksum mismatch")])


def test_metadata_rows_whose_object_or_line_is_gone_are_counted_missing(spark, archive):
    (gone, kept) = archive.ingest(D1, 2)
    archive.store.delete(f"raw/dt={D1.isoformat()}/{gone}.json")
    key, batch_ids = archive.batch(D1, 4)
    lines = archive.store.get(key).split(b"\n")
    archive.store.put(key, b"\n".join(lines[:2]))  # lines 2 and 3 cut off
    (gone_too,) = archive.ingest(D2, 1)
    archive.store.delete(f"raw/dt={D2.isoformat()}/{gone_too}.json")  # D2 keeps only an orphan
    archive.put(f"raw/dt={D2.isoformat()}/other.json", b"{}", record=False)

    run = archive.job(spark).run()

    assert (run.rows_read, run.rows_written, run.rows_rejected, run.orphans, run.missing) == (4, 3, 0, 1, 4)
    assert sorted(r["id"] for r in archive.curated().to_pylist()) == sorted([kept, *batch_ids[:2]])


def test_rerunning_a_date_gives_the_same_output(spark, archive):
    archive.ingest(D1, 3)
    key, _ = archive.batch(D1, 4)
    archive.put(f"raw/dt={D1.isoformat()}/stray.json", b"{}", record=False)
    archive.put(f"raw/dt={D1.isoformat()}/bad.json", b"[]")
    (overwritten, *_) = archive.ingest(D1, 1)
    archive.store.put(f"raw/dt={D1.isoformat()}/{overwritten}.json", b"{}")
    job = archive.job(spark)
    first = job.run(Selection(date=D1))
    curated, rejected, files = _rows(archive.curated()), archive.rejected().to_pylist(), archive.files()

    again = job.run(Selection(date=D1))

    counts = lambda r: (r.rows_read, r.rows_written, r.rows_rejected, r.duplicates, r.orphans, r.missing)  # noqa: E731
    assert counts(again) == counts(first) == (10, 7, 2, 0, 1, 0)
    assert _rows(archive.curated()) == curated
    assert [f.rsplit("/", 1)[0] for f in archive.files()] == [f.rsplit("/", 1)[0] for f in files]  # one file per date
    project = lambda rows: sorted((r["object_key"], r["reason"], r["raw"], r["dt"]) for r in rows)  # noqa: E731
    assert project(archive.rejected().to_pylist()) == project(rejected)
    assert {r["run_id"] for r in archive.rejected().to_pylist()} == {again.run_id}


# -- the curated schema: `id`, and what was written as `event_id` before ----------------


def _old_curated_partition(spark: Any, archive: Archive, day: date, ids: list[str]) -> list[dict[str, Any]]:
    """A date's curated output as the ETL wrote it before the id column was `id`: its
    schema (column `event_id`, in that order) written by Spark exactly as the job did."""
    from pyspark.sql.types import DateType, StringType, StructField, StructType, TimestampType

    old_schema = StructType([
        StructField("event_id", StringType(), False),
        StructField("received_at", TimestampType(), False),
        StructField("event_time", TimestampType(), True),
        StructField("source", StringType(), True),
        StructField("type", StringType(), True),
        StructField("payload", StringType(), False),
        StructField("object_key", StringType(), False),
        StructField("dt", DateType(), False),
    ])
    at = datetime(day.year, day.month, day.day, 10, 0, tzinfo=UTC)
    rows = [(i, at + timedelta(seconds=n), None, "old", "t", json.dumps({"n": n}), f"raw/dt={day}/{i}.json", day)
            for n, i in enumerate(ids)]
    (spark.createDataFrame(rows, old_schema).repartition("dt").write.mode("overwrite")
     .option("partitionOverwriteMode", "dynamic").partitionBy("dt").parquet(Layout.for_store(archive.store).curated))
    return [{"id": r[0], "received_at": r[1], "source": r[3], "payload": r[5], "dt": r[7]} for r in rows]


def test_curated_parquet_written_with_event_id_is_migrated_to_id_once(spark, archive):
    old = _old_curated_partition(spark, archive, D1, ["old-1", "old-2"])
    (old_file,) = [archive.root / f for f in archive.files() if "dt=2026-11-24" in f]
    assert "event_id" in pq.read_schema(old_file).names
    assert (old_file.parent / f".{old_file.name}.crc").exists()  # Hadoop's checksum of the old bytes
    new = archive.ingest(D2, 2)

    run = archive.job(spark).run(Selection(date=D2))  # D1 is not selected: migrated, not rewritten by Spark

    assert (run.status, run.rows_written) == ("succeeded", 2)
    assert archive.store.get("curated/_schema").strip() == b"2"
    assert pq.read_schema(old_file).names == ["id", "received_at", "event_time", "source", "type", "payload",
                                              "object_key"]
    assert not (old_file.parent / f".{old_file.name}.crc").exists()
    table = archive.curated()  # both dates in one dataset: one schema
    assert {f.name: f.type for f in table.schema} == CURATED_TYPES
    rows = _rows(table)
    assert [r["id"] for r in rows] == sorted(["old-1", "old-2", *new])
    assert [{k: r[k] for k in ("id", "received_at", "source", "payload", "dt")} for r in rows if r["dt"] == D1] == old
    read_by_spark = spark.read.parquet(Layout.for_store(archive.store).curated).where(f"dt = '{D1}'")
    assert sorted(r["id"] for r in read_by_spark.select("id").collect()) == ["old-1", "old-2"]

    migrated = old_file.read_bytes()
    archive.job(spark).run(Selection(date=D2))
    archive.store.delete("curated/_schema")  # a lost marker: nothing left to rewrite either
    archive.job(spark).run(Selection(date=D2))
    assert old_file.read_bytes() == migrated
    assert archive.store.get("curated/_schema").strip() == b"2"


# -- the container wires the ETL ----------------------------------------------------------


def test_the_container_builds_the_job_on_the_store_and_leaves_a_session_it_did_not_start(spark, archive):
    from wotr_apps.container import build_container

    archive.ingest(D1, 2)
    container = build_container(archive.settings, role="etl")
    said: list[str] = []
    container.etl_say.override(providers.Object(said.append))
    try:
        assert container.etl_layout().root == f"file://{archive.root}"
        job = container.etl_job()
        run = job.run()
    finally:
        container.shutdown_resources()

    assert (run.status, run.rows_written) == ("succeeded", 2)
    assert any(line.startswith(f"run {run.run_id}") for line in said)
    assert spark.range(3).count() == 3  # the test session is still running


@pytest.mark.parametrize("per_object", [1, 50])
def test_the_benchmark_archive_is_read_back_whole_with_its_torn_events_rejected(spark, archive, per_object):
    from wotr_apps.etl.bench import generate

    torn = generate(archive.root, archive.repo, 420, 2, broken_every=40, per_object=per_object)
    every = list(archive.repo.received_between(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)))

    run = archive.job(spark).run()

    assert torn == 10 and len(every) == 420
    assert (run.rows_read, run.rows_written, run.rows_rejected, run.duplicates, run.orphans, run.missing) == (
        420, 410, 10, 0, 0, 0)
    rejected = archive.rejected().to_pylist()
    assert {r["reason"] for r in rejected} == {"checksum mismatch"}
    written = {r["id"] for r in archive.curated().to_pylist()}
    torn_ids = {m.id for m in every} - written
    assert len(written) == 410 and len(torn_ids) == 10
    by_id = {m.id: m for m in every}
    assert sorted(r["object_key"] for r in rejected) == sorted(by_id[i].object_key for i in torn_ids)
