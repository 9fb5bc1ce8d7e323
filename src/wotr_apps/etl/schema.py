"""The explicit schemas of the ETL: what a raw object may hold, and what it writes.

Nothing is inferred: the raw JSON is parsed against `RAW_SCHEMA` (every field read as a
string, so a wrong type never fails the job, and `_corrupt_record` catches what is not
JSON), the metadata rows the job checks the archive against arrive as `METADATA_SCHEMA`,
and the output columns are cast to `CURATED_SCHEMA` / `REJECTED_SCHEMA`.

The event's part of both is derived from the domain model (`wotr_domain.models.Event`,
through `msgspec.structs.fields`), so a field added to the event is archived, parsed and
curated without a second list to keep in step: `RAW_SCHEMA` has one string field per
event field (as the JSON names it), and `CURATED_SCHEMA` one column per event field,
typed from its Python type (`EVENT_COLUMNS`), then `object_key` and the partition `dt`.
"""

from __future__ import annotations

import datetime as dt
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import msgspec
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from wotr_domain.models import Event

__all__ = [
    "COLUMN_NAMES",
    "CORRUPT",
    "CURATED_SCHEMA",
    "EVENT_COLUMNS",
    "METADATA_SCHEMA",
    "RAW_SCHEMA",
    "REJECTED_SCHEMA",
    "REQUIRED_FIELDS",
    "EventColumn",
    "curated_schema",
    "event_columns",
    "raw_schema",
]

CORRUPT = "_corrupt_record"

# Event fields whose curated column has another name: the client's `timestamp` is the
# `event_time` column, as in the analytics table (`wotr_domain.models.AnalyticsRow`).
COLUMN_NAMES = {"timestamp": "event_time"}

# Python type of an event field -> Spark type of its column. A dict or a list (the
# payload) is kept as its compact JSON text.
_SCALARS: dict[Any, DataType] = {
    str: StringType(),
    dt.datetime: TimestampType(),
    dt.date: DateType(),
    bool: BooleanType(),
    int: LongType(),
    float: DoubleType(),
}
_JSON_TEXT = (dict, list)


@dataclass(frozen=True, slots=True)
class EventColumn:
    """One event field in the ETL: `field` as the archived JSON names it, `name` its
    curated column, `type` the column's Spark type, `nullable` whether it may be absent,
    `json_text` whether the column holds the field's JSON text (a dict or a list)."""

    field: str
    name: str
    type: DataType
    nullable: bool
    json_text: bool = False


def _column_type(annotation: Any, where: str) -> tuple[DataType, bool, bool]:
    """The Spark type of an annotation, whether it admits None, whether it is JSON text."""
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"{where}: the ETL cannot map the union {annotation!r} to one column type")
        annotation = args[0]
    base = get_origin(annotation) or annotation
    if base in _JSON_TEXT:
        return StringType(), optional, True
    if base in _SCALARS:
        return _SCALARS[base], optional, False
    raise TypeError(f"{where}: the ETL has no column type for {annotation!r}; add it to schema._SCALARS")


def event_columns(model: type[msgspec.Struct] = Event) -> tuple[EventColumn, ...]:
    """The columns of `model`'s fields, in field order (`Event` by default)."""
    columns = []
    for f in msgspec.structs.fields(model):
        spark_type, optional, json_text = _column_type(f.type, f"{model.__name__}.{f.name}")
        columns.append(EventColumn(field=f.encode_name, name=COLUMN_NAMES.get(f.name, f.name), type=spark_type,
                                   nullable=optional or not f.required, json_text=json_text))
    return tuple(columns)


def raw_schema(model: type[msgspec.Struct] = Event) -> StructType:
    """Every field of the archived event as a string (its JSON text for an object or a
    number), so no value fails the parse, plus `_corrupt_record` for what is not JSON."""
    return StructType([StructField(c.field, StringType(), True) for c in event_columns(model)]
                      + [StructField(CORRUPT, StringType(), True)])


def curated_schema(model: type[msgspec.Struct] = Event) -> StructType:
    """The event's columns, typed, then the raw object's key and the partition date."""
    return StructType([StructField(c.name, c.type, c.nullable) for c in event_columns(model)]
                      + [StructField("object_key", StringType(), False), StructField("dt", DateType(), False)])


EVENT_COLUMNS = event_columns()
REQUIRED_FIELDS = tuple(f.encode_name for f in msgspec.structs.fields(Event) if f.required)

# The archived event (`wotr_domain.models.Event`); `payload` as a string keeps its JSON text.
RAW_SCHEMA = raw_schema()

# The metadata rows of the events received on the selected dates, one row per raw object
# (`object_key`) with its events: `line` null when the object is the event, else the
# 0-based line of an NDJSON object; `checksum` the SHA-256 hex of exactly the event's bytes.
METADATA_EVENT = StructType(
    [
        StructField("id", StringType(), False),
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

# `id`, `received_at`, `payload`, `source`, `type`, `event_time`, `object_key`, `dt`.
CURATED_SCHEMA = curated_schema()

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
