"""Reconciliation: for every event id the client was told was accepted, exactly one of
everything; for every id it was refused, nothing or exactly one of everything.

Stages, each read from the store itself (the processes stopped first where a store is
held by one):

- metadata: rows in `<schema>.event_metadata` (PostgreSQL), and `published` status;
- archive: the object (and line) the row names in the S3 bucket, read through
  `wotr_adapters.minio` and verified with `wotr_domain.archive.event_bytes` (checksum);
- analytics: rows in every consumer's in-process ClickHouse engine, counted without and
  with FINAL. Each consumer owns its engine, and a rebalance can load one event in two of
  them: rows across engines are deduplicated by id (as the one table of a ClickHouse
  server would), and what was there before deduplication is the raw duplicate figure;
- curated: rows of the Parquet that `wotr etl` wrote under `curated/events/`, read
  with pyarrow.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .pipeline import Pipeline


@dataclass
class Snapshot:
    """What the stores hold for a set of ids."""

    meta_rows: Counter = field(default_factory=Counter)  # id -> metadata rows
    status: dict[str, str] = field(default_factory=dict)  # id -> stored | published
    archive: dict[str, str] = field(default_factory=dict)  # id -> ok | missing | checksum mismatch
    raw_rows: Counter = field(default_factory=Counter)  # id -> ClickHouse rows over all engines, no FINAL
    final_max: Counter = field(default_factory=Counter)  # id -> the most FINAL rows of it in one engine
    engines_with: Counter = field(default_factory=Counter)  # id -> engines that hold it
    parquet: Counter | None = None  # id -> curated Parquet rows (None: not read yet)


def _minio(p: Pipeline):
    from wotr_adapters.connections import S3Connection
    from wotr_adapters.minio import MinioObjectStore, minio_client

    env = p.stack_env
    conn = S3Connection(endpoint=env["MINIO_ENDPOINT"], access_key=env["MINIO_ACCESS_KEY"],
                        secret_key=env["MINIO_SECRET_KEY"], bucket=p.bucket)
    return MinioObjectStore(minio_client(conn), p.bucket), minio_client(conn)


def read_metadata_and_archive(p: Pipeline, observer: Any, ids: set[str], snap: Snapshot) -> None:
    from wotr_domain.archive import ChecksumMismatch, event_bytes
    from wotr_domain.errors import NotFound
    from wotr_domain.models import EventMetadata, EventStatus

    rows = observer.sql(
        "SELECT id, object_key, size, checksum, received_at, status, line, count(*) OVER (PARTITION BY id) "
        "FROM {schema}.event_metadata WHERE id = ANY(%s)", (sorted(ids),))
    if rows is None:
        raise RuntimeError("PostgreSQL did not answer the reconciliation query")
    store, _ = _minio(p)
    objects: dict[str, bytes | None] = {}
    for event_id, key, size, checksum, received_at, status, line, n in rows:
        snap.meta_rows[event_id] = n
        snap.status[event_id] = status
        meta = EventMetadata(id=event_id, object_key=key, size=size, checksum=checksum, received_at=received_at,
                             status=EventStatus(status), line=line)
        if key not in objects:
            try:
                objects[key] = store.get(key)
            except NotFound:
                objects[key] = None
        obj = objects[key]
        try:
            if obj is None:
                raise NotFound(key)
            event_bytes(meta, obj)
            snap.archive[event_id] = "ok"
        except NotFound:
            snap.archive[event_id] = "missing"
        except ChecksumMismatch:
            snap.archive[event_id] = "checksum mismatch"


def read_engines(p: Pipeline, ids: set[str], snap: Snapshot) -> None:
    """Every consumer engine of the namespace; the consumers must be stopped."""
    for engine in p.engine_dirs():
        raw, final = p.engine_counts(engine)
        for event_id, n in raw.items():
            if event_id in ids:
                snap.raw_rows[event_id] += n
                snap.engines_with[event_id] += 1
        for event_id, n in final.items():
            if event_id in ids:
                snap.final_max[event_id] = max(snap.final_max[event_id], n)


def read_parquet(p: Pipeline) -> Counter:
    """Rows per id in the curated Parquet of the namespace's bucket."""
    import pyarrow.parquet as pq

    _, client = _minio(p)
    counts: Counter = Counter()
    for obj in client.list_objects(p.bucket, prefix="curated/events/", recursive=True):
        if not obj.object_name.endswith(".parquet"):
            continue
        response = client.get_object(p.bucket, obj.object_name)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        counts.update(pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist())
    return counts


@dataclass
class Verdict:
    accepted: int = 0
    lost: dict[str, str] = field(default_factory=dict)  # id -> the first stage that lacks it
    duplicated: dict[str, str] = field(default_factory=dict)  # id -> where it is more than once after dedupe
    loaded_rows_raw: int = 0  # ClickHouse rows of the scenario's ids before deduplication
    loaded_ids: int = 0
    refused: int = 0
    refused_absent: int = 0
    refused_present: int = 0
    refused_partial: dict[str, str] = field(default_factory=dict)  # refused ids present somewhere but not everywhere
    refused_duplicated: dict[str, str] = field(default_factory=dict)

    @property
    def raw_duplicates(self) -> int:
        return self.loaded_rows_raw - self.loaded_ids

    @property
    def raw_duplicate_rate(self) -> float:
        return self.raw_duplicates / self.loaded_ids if self.loaded_ids else 0.0


def _missing_stage(event_id: str, snap: Snapshot, curated: bool) -> str | None:
    if snap.meta_rows[event_id] == 0:
        return "no metadata row"
    if snap.archive.get(event_id) != "ok":
        return f"archive {snap.archive.get(event_id, 'unread')}"
    if snap.status.get(event_id) != "published":
        return f"status {snap.status.get(event_id)}"
    if snap.raw_rows[event_id] == 0:
        return "not in ClickHouse"
    if curated and snap.parquet is not None and snap.parquet[event_id] == 0:
        return "not in the curated Parquet"
    return None


def _extra(event_id: str, snap: Snapshot, curated: bool) -> str | None:
    if snap.meta_rows[event_id] > 1:
        return f"{snap.meta_rows[event_id]} metadata rows"
    if snap.final_max[event_id] > 1:
        return f"{snap.final_max[event_id]} ClickHouse rows with FINAL in one engine"
    if curated and snap.parquet is not None and snap.parquet[event_id] > 1:
        return f"{snap.parquet[event_id]} Parquet rows"
    return None


def _present_anywhere(event_id: str, snap: Snapshot, curated: bool) -> bool:
    return bool(snap.meta_rows[event_id] or snap.raw_rows[event_id]
                or (curated and snap.parquet is not None and snap.parquet[event_id]))


def verdict(accepted: set[str], refused: set[str], snap: Snapshot, *, curated: bool) -> Verdict:
    v = Verdict(accepted=len(accepted), refused=len(refused))
    for event_id in accepted:
        stage = _missing_stage(event_id, snap, curated)
        if stage is not None:
            v.lost[event_id] = stage
        extra = _extra(event_id, snap, curated)
        if extra is not None:
            v.duplicated[event_id] = extra
    for event_id in refused:
        if not _present_anywhere(event_id, snap, curated):
            v.refused_absent += 1
            continue
        stage = _missing_stage(event_id, snap, curated)
        if stage is None:
            v.refused_present += 1
        else:
            v.refused_partial[event_id] = stage
        extra = _extra(event_id, snap, curated)
        if extra is not None:
            v.refused_duplicated[event_id] = extra
    for event_id in accepted | refused:
        if snap.raw_rows[event_id]:
            v.loaded_ids += 1
            v.loaded_rows_raw += snap.raw_rows[event_id]
    return v
