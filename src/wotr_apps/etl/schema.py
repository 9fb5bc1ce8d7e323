"""The explicit schemas of the ETL: what a raw object may hold, and what it writes.

Nothing is inferred: the raw JSON is parsed against `RAW_SCHEMA` (every field read as a
string, so a wrong type never fails the job, and `_corrupt_record` catches what is not
JSON), and the output columns are cast to `CURATED_SCHEMA` / `REJECTED_SCHEMA`.
"""

from __future__ import annotations

from pyspark.sql.types import DateType, StringType, StructField, StructType, TimestampType

__all__ = ["CORRUPT", "CURATED_SCHEMA", "RAW_SCHEMA", "REJECTED_SCHEMA", "REQUIRED_FIELDS"]

CORRUPT = "_corrupt_record"
REQUIRED_FIELDS = ("id", "received_at", "payload")

# The archived event (`wotr_domain.models.Event`); `payload` as a string keeps its JSON text.
RAW_SCHEMA = StructType(
    [StructField(name, StringType(), True) for name in ("id", "received_at", "payload", "source", "type", "timestamp")]
    + [StructField(CORRUPT, StringType(), True)]
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
