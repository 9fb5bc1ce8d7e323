"""The explicit schemas of the ETL: what a raw object may hold, and what it writes.

Nothing is inferred: the raw JSON is parsed against `RAW_SCHEMA` (every field read as a
string, so a wrong type never fails the job, and `_corrupt_record` catches what is not
JSON), the metadata rows the job checks the archive against arrive as `METADATA_SCHEMA`,
and the output columns are cast to `CURATED_SCHEMA` / `REJECTED_SCHEMA`.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    DateType,
    IntegerType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

__all__ = ["CORRUPT", "CURATED_SCHEMA", "METADATA_SCHEMA", "RAW_SCHEMA", "REJECTED_SCHEMA", "REQUIRED_FIELDS"]

CORRUPT = "_corrupt_record"
REQUIRED_FIELDS = ("id", "received_at", "payload")

# The archived event (`wotr_domain.models.Event`); `payload` as a string keeps its JSON text.
RAW_SCHEMA = StructType(
    [StructField(name, StringType(), True) for name in ("id", "received_at", "payload", "source", "type", "timestamp")]
    + [StructField(CORRUPT, StringType(), True)]
)

# The metadata rows of the events received on the selected dates, one row per raw object
# (`object_key`) with its events: `line` null when the object is the event, else the
# 0-based line of an NDJSON object; `checksum` the SHA-256 hex of exactly the event's bytes.
METADATA_EVENT = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("line", IntegerType(), True),
        StructField("checksum", StringType(), False),
    ]
)
METADATA_SCHEMA = StructType(
    [
        StructField("object_key", StringType(), False),
        StructField("dt", DateType(), False),  # the UTC date the events were received on
        StructField("events", ArrayType(METADATA_EVENT, False), False),
    ]
)

CURATED_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("received_at", TimestampType(), False),
        StructField("event_time", TimestampType(), True),
        StructField("source", StringType(), True),
        StructField("type", StringType(), True),
        StructField("payload", StringType(), False),
        StructField("object_key", StringType(), False),
        StructField("dt", DateType(), False),
    ]
)

REJECTED_SCHEMA = StructType(
    [
        StructField("object_key", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("raw", StringType(), True),
        StructField("run_id", StringType(), False),
        StructField("rejected_at", TimestampType(), False),
        StructField("dt", DateType(), False),
    ]
)
