"""The columns of a dataset's table, as people read them (docs/DESIGN.md §3, §9.1, §13): before any run from the
catalog (declared fields, the engines' own columns, partition columns), after a run from the Delta schema.

Types are named in Delta's vocabulary, which the catalog's ``schema:`` also uses: ``long``, ``double``,
``decimal(12,2)``, ``date``, ``timestamp`` (UTC), ``timestamp_ntz``, ``binary``; nested types spelled out as
``struct<sku: string, qty: long>``, ``array<long>``, ``map<string, integer>``. No Dagster here: the Dagster
layer turns these into ``dagster/column_schema``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ingest_platform.catalog import Dataset
from ingest_platform.engines.changes import CDC_DELETED, CDC_DELETED_AT, CDC_OP, CDC_POSITION

#: The engines' own columns (§3): name -> (type, description).
RESERVED = {
    "_kafka_topic": ("string", "Kafka topic of the record."),
    "_kafka_partition": ("integer", "Kafka partition of the record."),
    "_kafka_offset": ("long", "Kafka offset of the record; unique per partition in an append table."),
    "_kafka_timestamp": ("timestamp", "Kafka record timestamp (create or log-append time), UTC."),
    "_kafka_key": ("binary", "Kafka record key, null when absent."),
    "_event_time": ("timestamp", "Event time: event_time_field parsed, else the Kafka timestamp; UTC."),
    "_ingested_at": ("timestamp", "When the engine decoded the batch, UTC."),
}
#: Columns of Debezium tables (§9.1); the last two with ``delete_mode: soft`` only.
CDC = {
    CDC_OP: ("string", "Debezium op of the change that produced the row: c, r, u or d."),
    CDC_POSITION: ("string", "Source position of that change (binlog file/pos/row, LSN or ts_ms); orders changes."),
}
SOFT_DELETE = {
    CDC_DELETED: ("boolean", "True once the source deleted the row (delete_mode: soft)."),
    CDC_DELETED_AT: ("timestamp", "Event time of the delete, UTC."),
}
#: Partition columns the engines derive from the event time, UTC (§3).
DERIVED = {
    "year": ("integer", "Year of _event_time (UTC); partition column."),
    "month": ("integer", "Month of _event_time (UTC); partition column."),
    "day": ("integer", "Day of month of _event_time (UTC); partition column."),
    "hour": ("integer", "Hour of _event_time (UTC); partition column."),
    "date": ("date", "Date of _event_time (UTC); partition column."),
}
#: The type shown for a column the catalog describes but does not type (the first batch infers it).
INFERRED = "inferred"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str | None = None
    nullable: bool = True
    partition: bool = False


def catalog_columns(dataset: Dataset) -> list[Column]:
    """The columns known before the first run: the catalog's declared (or only described) fields, then the
    engines' columns, then derived partition columns. Fields the records carry but the catalog does not
    mention appear after the first run (``table_columns``)."""
    described = dataset.column_descriptions
    columns = [Column(name, str(kind), described.get(name), partition=name in dataset.partition_by)
               for name, kind in dataset.fields.items()]  # fmt: skip
    columns += [Column(name, INFERRED, text) for name, text in described.items() if name not in dataset.fields]
    columns += [Column(name, kind, text) for name, (kind, text) in _engine_columns(dataset).items()]
    columns += [Column(name, *DERIVED[name], partition=True) for name in dataset.partition_by if name in DERIVED]
    return columns


def table_columns(
    schema_json: str, partition_columns: Sequence[str], descriptions: Mapping[str, str] | None = None
) -> list[Column]:
    """The columns of the table's Delta schema (``DeltaTable.schema().to_json()``) in table order, with the
    ``descriptions`` given (a dataset's ``column_descriptions``) and the engines' own; ``partition_columns``
    from the table's metadata."""
    known = {**RESERVED, **CDC, **SOFT_DELETE, **DERIVED}
    described = descriptions or {}
    columns = []
    for entry in json.loads(schema_json)["fields"]:
        name = entry["name"]
        text = described.get(name) or (known[name][1] if name in known else None)
        columns.append(Column(name, type_name(entry["type"]), text, bool(entry.get("nullable", True)),
                              name in partition_columns))  # fmt: skip
    return columns


def type_name(delta_type: str | dict) -> str:
    """A Delta schema type (its JSON form) as readable text; nested types recursively."""
    if isinstance(delta_type, str):
        return delta_type
    kind = delta_type.get("type")
    if kind == "struct":
        return "struct<" + ", ".join(f"{f['name']}: {type_name(f['type'])}" for f in delta_type["fields"]) + ">"
    if kind == "array":
        return f"array<{type_name(delta_type['elementType'])}>"
    if kind == "map":
        return f"map<{type_name(delta_type['keyType'])}, {type_name(delta_type['valueType'])}>"
    return str(kind)


def _engine_columns(dataset: Dataset) -> dict[str, tuple[str, str]]:
    columns = dict(RESERVED)
    if dataset.format == "debezium":
        columns.update(CDC)
        if dataset.delete_mode == "soft":
            columns.update(SOFT_DELETE)
    return columns
