"""Migrations of the curated Parquet already written, run at the start of every ETL run.

The marker object `curated/_schema` holds the version of the curated schema the output
under `curated/events/` follows (a number, as text). No marker is version 1: what the
ETL wrote before the marker existed. Each migration rewrites, through the object store
port, only the files that still need it, then the marker is written; a run finds the
marker current and does nothing. A migration interrupted half-way is simply done again:
each rewrite is one `put` of a whole file under its key, and a file already rewritten
is recognised and left alone.

Versions:

1. the event id column is `event_id`;
2. it is `id`, as in PostgreSQL and ClickHouse (and `wotr_domain.models.Event`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from wotr_domain.errors import NotFound
from wotr_domain.ports import ObjectStore

from .layout import CURATED_PREFIX, SCHEMA_MARKER

__all__ = ["RENAMES", "SCHEMA_VERSION", "migrate_curated", "schema_version"]

SCHEMA_VERSION = 2
# Version -> the column renames that lead to it from the version before.
RENAMES: dict[int, dict[str, str]] = {2: {"event_id": "id"}}
SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"  # Spark's own copy of the schema
PARQUET = "application/vnd.apache.parquet"


def schema_version(store: ObjectStore) -> int:
    """The version the marker holds; 1 without a marker (or with one that is not a number)."""
    try:
        return int(store.get(SCHEMA_MARKER).decode("ascii").strip())
    except NotFound:
        return 1
    except (UnicodeDecodeError, ValueError):
        return 1


def migrate_curated(store: ObjectStore, *, say: Callable[[str], None] = lambda _m: None) -> int:
    """Bring the curated Parquet in `store` to `SCHEMA_VERSION`; returns the files rewritten."""
    current = schema_version(store)
    if current >= SCHEMA_VERSION:
        return 0
    renames: dict[str, str] = {}
    for version in range(current + 1, SCHEMA_VERSION + 1):
        for old, new in RENAMES.get(version, {}).items():
            renames = {k: (new if v == old else v) for k, v in renames.items()} | {old: new}
    rewritten = 0
    for key in list(store.list(f"{CURATED_PREFIX}/")):
        hidden = any(part.startswith(("_", ".")) for part in key.split("/"))  # as Spark skips them
        if key.endswith(".parquet") and not hidden and _rewrite(store, key, renames):
            rewritten += 1
    store.put(SCHEMA_MARKER, f"{SCHEMA_VERSION}\n".encode("ascii"), "text/plain")
    if rewritten:
        changes = ", ".join(f"{old} -> {new}" for old, new in renames.items())
        say(f"curated schema {current} -> {SCHEMA_VERSION}: {rewritten:,} Parquet file(s) rewritten ({changes})")
    return rewritten


def _rewrite(store: ObjectStore, key: str, renames: dict[str, str]) -> bool:
    """Rename the columns of one Parquet file in place; False when it has none to rename
    (or is not a Parquet file pyarrow can read, which is left as it is)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = store.get(key)
    try:
        names = pq.read_schema(io.BytesIO(data)).names
        if not any(n in renames for n in names):
            return False
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError):
        return False
    metadata = dict(table.schema.metadata or {})  # the file's key-value metadata (renaming drops it)
    if SPARK_SCHEMA_KEY in metadata:  # Spark reads the schema from here first: rename there too
        metadata[SPARK_SCHEMA_KEY] = _renamed_spark_schema(metadata[SPARK_SCHEMA_KEY], renames)
    table = table.rename_columns([renames.get(n, n) for n in table.column_names]).replace_schema_metadata(metadata)
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy", coerce_timestamps="us")
    store.put(key, out.getvalue(), PARQUET)
    # Hadoop's local file system keeps a checksum beside each file it wrote; it would no
    # longer match, and a missing one is not checked. (On a bucket there is none.)
    folder, _, name = key.rpartition("/")
    store.delete(f"{folder}/.{name}.crc")
    return True


def _renamed_spark_schema(text: bytes, renames: dict[str, str]) -> bytes:
    try:
        schema: Any = json.loads(text)
        for field in schema.get("fields", []):
            field["name"] = renames.get(field["name"], field["name"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return text
    return json.dumps(schema, separators=(",", ":")).encode()
