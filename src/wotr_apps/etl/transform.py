"""The ETL's DataFrame logic: match raw objects to metadata, verify, parse, classify.

Pure functions of DataFrames (no I/O), so the job module stays a thin shell around them.
The archive policy (`wotr_domain.archive`) decides what is an event: the bytes a metadata
row names (a whole object, or one line of an NDJSON object) whose SHA-256 is the row's
checksum. Every row of `classify`'s result ends in exactly one status:

- `written`: a verified event, the earliest copy of its event id in the run;
- `duplicate`: a later copy of an id already written;
- `rejected` (with the reason): bytes whose checksum differs from their metadata row's
  (`checksum mismatch`), or a verified event that is not a valid one;
- `orphan`: an object, or a line of an object, that no metadata row names: not an event;
- `missing`: a metadata row whose object or line is not in the archive.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from wotr_domain.models import ArchivedEvent

from .schema import CORRUPT, CURATED_SCHEMA, EVENT_COLUMNS, METADATA_SCHEMA, RAW_SCHEMA, REJECTED_SCHEMA, EventColumn

__all__ = [
    "CHECKSUM_MISMATCH",
    "DUPLICATE",
    "MISSING",
    "ORPHAN",
    "REJECTED",
    "STATUSES",
    "WRITTEN",
    "classify",
    "curated_rows",
    "metadata_frame",
    "metadata_rows",
    "raw_objects",
    "rejected_rows",
    "verify",
]

WRITTEN, DUPLICATE, REJECTED, ORPHAN, MISSING = "written", "duplicate", "rejected", "orphan", "missing"
STATUSES = (WRITTEN, DUPLICATE, REJECTED, ORPHAN, MISSING)
CHECKSUM_MISMATCH = "checksum mismatch"
_VERIFIED = "verified"  # the outcome of `verify` for bytes that match their checksum
_KEY = r"(raw/dt=[^/]+/[^/]+)$"
_KEY_DATE = r"raw/dt=(\d{4}-\d{2}-\d{2})/[^/]+$"
# One character per byte and back: splitting the decoded text on "\n" splits the bytes on
# b"\n", and encoding a piece gives its exact bytes (even when they are not UTF-8).
_BYTES_AS_TEXT = "ISO-8859-1"


def raw_objects(spark: object, paths: list[str]) -> DataFrame:
    """One row per raw object: its key, its date and its bytes.

    Objects are read whole with the `binaryFile` source, about three times faster than
    `text` with `wholetext` on many small files. Zero-byte objects are skipped by it.
    """
    frame = spark.read.format("binaryFile").load(paths)  # type: ignore[attr-defined]
    return frame.select(
        F.regexp_extract("path", _KEY, 1).alias("object_key"),
        F.regexp_extract("path", _KEY_DATE, 1).try_cast("date").alias("dt"),
        F.col("content"),
    )


MetadataRow = tuple[str, date, list[tuple[str, int | None, str]]]


def metadata_rows(rows: Iterable[tuple[date, ArchivedEvent]]) -> list[MetadataRow]:
    """Archive entries with the day each was asked for, grouped by object as `METADATA_SCHEMA` rows.

    One row per object key, whatever the days its events came from (its `dt` is the first),
    in the order the objects first come; events in the order they come.
    """
    objects: dict[str, MetadataRow] = {}
    for day, m in rows:
        objects.setdefault(m.object_key, (m.object_key, day, []))[2].append((m.id, m.line, m.checksum))
    return list(objects.values())


def metadata_frame(spark: object, rows: list[MetadataRow]) -> DataFrame:
    """The `metadata_rows` of the selected dates as a DataFrame, with the explicit schema.

    Handed to Spark as one Arrow table built from flat columns: creating it from Python
    rows costs seconds per 100,000 events (each row pickled, then unpickled in the JVM
    at every use), an Arrow table a fraction of that.
    """
    import pyarrow as pa

    keys, days, offsets, ids, lines, checksums = [], [], [0], [], [], []
    for key, day, events in rows:
        keys.append(key)
        days.append(day)
        for event_id, line, checksum in events:
            ids.append(event_id)
            lines.append(line)
            checksums.append(checksum)
        offsets.append(len(ids))
    events_type = pa.struct([pa.field("id", pa.string(), False), pa.field("line", pa.int32()),
                             pa.field("checksum", pa.string(), False)])
    events = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.StructArray.from_arrays([pa.array(ids, pa.string()), pa.array(lines, pa.int32()),
                                    pa.array(checksums, pa.string())], fields=list(events_type)),
        type=pa.list_(pa.field("element", events_type, False)),
    )
    table = pa.Table.from_arrays([pa.array(keys, pa.string()), pa.array(days, pa.date32()), events],
                                 schema=pa.schema([pa.field("object_key", pa.string(), False),
                                                   pa.field("dt", pa.date32(), False),
                                                   pa.field("events", events.type, False)]))
    return spark.createDataFrame(table, METADATA_SCHEMA)  # type: ignore[attr-defined]


def _unit(line: Column, event_id: Column, checksum: Column, body: Column) -> Column:
    return F.struct(
        line.cast("int").alias("line"),
        event_id.cast("string").alias("meta_id"),
        checksum.cast("string").alias("checksum"),
        body.cast("binary").alias("bytes"),
    )


def verify(objects: DataFrame, metadata: DataFrame) -> DataFrame:
    """Match the archive to its metadata: one row per event, orphan and missing event.

    `objects` as `raw_objects` gives them, `metadata` as `metadata_frame`. The two are
    joined by object key (a full outer join: objects without metadata and metadata without
    objects both show). Within an object:

    - a metadata row with line null takes the whole object;
    - a metadata row with line N takes line N of the object split on b"\\n" (numbered from
      0, blank lines included, as `wotr_domain.archive.line_of` does); every other
      non-empty line of that object is an orphan;
    - an object no metadata row names is one orphan.

    Result columns: `object_key`, `dt`, `line`, `meta_id` (the metadata row's event id),
    `bytes` (the event's bytes) and `outcome`: `verified` (SHA-256 of the bytes equals
    the row's checksum), `checksum mismatch`, `orphan` or `missing` (no such object, or
    an empty or absent line).
    """
    joined = objects.join(metadata.withColumnRenamed("dt", "meta_dt"), "object_key", "full_outer")
    content, events = F.col("content"), F.col("events")
    # Lines are split only for objects whose events are lines (null for the others), once
    # per object: a column of its own, because an expression used inside the lambdas below
    # is evaluated again for every element (an object of N lines split N times).
    by_line, pieces = F.col("_by_line"), F.col("_pieces")
    joined = joined.withColumn("_by_line", F.exists(events, lambda e: e["line"].isNotNull())).withColumn(
        "_pieces", F.when(by_line, F.split(F.decode(content, _BYTES_AS_TEXT), "\n"))
    )
    named = F.transform(
        events,
        lambda e: _unit(
            e["line"],
            e["id"],
            e["checksum"],
            F.when(e["line"].isNull(), content).otherwise(F.encode(F.get(pieces, e["line"]), _BYTES_AS_TEXT)),
        ),
    )
    non_empty = F.filter(F.transform(pieces, lambda p, i: F.when(p != "", i)), lambda i: i.isNotNull())
    unnamed_lines = F.array_except(non_empty, F.transform(events, lambda e: e["line"]))
    orphan_lines = F.transform(unnamed_lines, lambda i: _unit(i, F.lit(None), F.lit(None), F.lit(None)))
    nothing = F.lit(None)
    units = (
        F.when(events.isNull(), F.array(_unit(nothing, nothing, nothing, nothing)))  # an orphan object
        .when(by_line, F.concat(named, orphan_lines))
        .otherwise(named)
    )
    rows = joined.select(
        "object_key", F.coalesce("dt", "meta_dt").alias("dt"), F.explode(units).alias("u")
    ).select("object_key", "dt", "u.line", "u.meta_id", "u.checksum", "u.bytes")
    body = F.col("bytes")
    outcome = (
        F.when(F.col("meta_id").isNull(), ORPHAN)
        .when(body.isNull() | (F.length(body) == 0), MISSING)
        .when(F.sha2(body, 256) != F.col("checksum"), CHECKSUM_MISMATCH)
        .otherwise(_VERIFIED)
    )
    return rows.withColumn("outcome", outcome).drop("checksum")


def _value(column: EventColumn) -> Column:
    """An event field parsed from the JSON (where every field is read as a string) as its
    column's type: text as it is (an object's or a list's compact JSON text), anything
    else cast, null when it does not cast (the rules of `classify` reject what matters)."""
    text = F.col(f"j.`{column.field}`")
    return text if isinstance(column.type, StringType) else text.try_cast(column.type)


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def classify(units: DataFrame) -> DataFrame:
    """Parse each verified event against `RAW_SCHEMA` and give every row its status.

    `units` as `verify` gives them. Only bytes that match their checksum are parsed as
    events; a mismatch is rejected as `checksum mismatch` whatever it holds.
    """
    outcome = F.col("outcome")
    # Invalid UTF-8 becomes U+FFFD, so even a garbled event can be written and read back.
    # The checksum was computed on the bytes before this.
    raw = F.make_valid_utf8(F.col("bytes").cast("string"))
    j = F.from_json("raw", RAW_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    parsed = units.withColumn("raw", raw).withColumn("j", F.when(outcome == _VERIFIED, j))
    # Each field is parsed once, in a projection of its own: written inside the rules below,
    # a timestamp would be parsed again by every rule that reads it, and the rules again
    # where the raw text is kept.
    typed = parsed.select("object_key", "dt", "line", "outcome", "raw", "j",
                          *(_value(c).alias(c.name) for c in EVENT_COLUMNS))  # every event field, typed as its column
    value = {c.field: F.col(c.name) for c in EVENT_COLUMNS}
    received, event_time = value["received_at"], value["timestamp"]
    reason = (
        F.when(outcome == CHECKSUM_MISMATCH, CHECKSUM_MISMATCH)
        .when(outcome != _VERIFIED, None)
        .when(F.col("j").isNull() | F.col(f"j.{CORRUPT}").isNotNull(), "not valid JSON")
        .when(_blank(F.col("j.id")), "missing id")
        .when(F.col("j.received_at").isNull(), "missing received_at")
        .when(received.isNull(), "received_at is not a timestamp")
        .when(F.col("j.payload").isNull(), "missing payload")
        .when(~F.ltrim(F.col("j.payload")).startswith("{"), "payload is not a JSON object")
        .when(F.col("j.timestamp").isNotNull() & event_time.isNull(), "timestamp is not a timestamp")
        .when(F.to_date(received) != F.col("dt"), "received_at is not on the date of its object key")
    )
    judged = typed.select("object_key", "dt", "line", "outcome", "raw", *value.values(), reason.alias("reason"))
    # The text is kept only where it is rejected (`rejected_rows`): the other rows go
    # through the shuffle for duplicates and the run's cache without it.
    fields = judged.withColumn("raw", F.when((outcome != _VERIFIED) | F.col("reason").isNotNull(), F.col("raw")))
    valid = (F.col("outcome") == _VERIFIED) & F.col("reason").isNull()
    # The earliest copy of an id wins; key and line break ties so reruns pick the same one.
    order = Window.partitionBy(valid, "id").orderBy("received_at", "object_key", "line")
    rank = F.row_number().over(order)
    status = (
        F.when(F.col("outcome") == ORPHAN, ORPHAN)
        .when(F.col("outcome") == MISSING, MISSING)
        .when(~valid, REJECTED)
        .when(rank == 1, WRITTEN)
        .otherwise(DUPLICATE)
    )
    return fields.withColumn("status", status).drop("outcome")


def curated_rows(classified: DataFrame) -> DataFrame:
    """The curated events, in `CURATED_SCHEMA` column order and types."""
    rows = classified.where(F.col("status") == WRITTEN)
    return rows.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in CURATED_SCHEMA.fields))


def rejected_rows(classified: DataFrame, run_id: str, at: datetime) -> DataFrame:
    """The rejected events with their reason and raw text, in `REJECTED_SCHEMA` order."""
    rows = classified.where(F.col("status") == REJECTED).select(
        "object_key", "reason", "raw", F.lit(run_id).alias("run_id"), F.lit(at).alias("rejected_at"), "dt"
    )
    return rows.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in REJECTED_SCHEMA.fields))
