"""Change records for upserts and Debezium tables, shared by both engines (docs/DESIGN.md §9).

The one definition of: the ``_cdc_*`` columns, the sortable source position, which column orders a
dataset's changes, how a batch is reduced to the last change per key, and the MERGE clauses (as SQL text,
quoted for deltalake's DataFusion or for Spark).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ingest_platform.catalog import Dataset
from ingest_platform.lake.commit import MergeClauses

CDC_OP = "_cdc_op"
CDC_POSITION = "_cdc_position"
CDC_DELETED = "_cdc_deleted"
CDC_DELETED_AT = "_cdc_deleted_at"
#: Debezium ops that change a row; others (``t`` truncate, ``m`` message) are dead-lettered.
APPLIED_OPS = ("c", "r", "u", "d")
DELETE_OP = "d"
#: Columns a soft delete sets from the delete itself (data columns take its ``before`` image where not null).
SOFT_DELETE_COLUMNS = (
    CDC_OP, CDC_POSITION, CDC_DELETED, CDC_DELETED_AT,
    "_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp", "_kafka_key", "_event_time",
    "_ingested_at",
)  # fmt: skip
POSITION_DIGITS = 20
ROW_DIGITS = 10


def position_of(source: Mapping[str, object] | None, ts_ms: int | None) -> str | None:
    """The sortable source position of one Debezium event (the reference for both engines' vector code).

    MySQL: binlog file, position and row; Postgres: the LSN; otherwise the envelope's ``ts_ms``.
    """
    source = source or {}
    if source.get("lsn") is not None:
        return f"pg:{int(source['lsn']):0{POSITION_DIGITS}d}"
    if source.get("file") is not None and source.get("pos") is not None:
        row = int(source.get("row") or 0)
        return f"mysql:{source['file']}:{int(source['pos']):0{POSITION_DIGITS}d}:{row:0{ROW_DIGITS}d}"
    if ts_ms is not None:
        return f"ts:{int(ts_ms):0{POSITION_DIGITS}d}"
    return None


def position_column(source: pa.Array | pa.ChunkedArray | None, ts_ms: pa.Array | pa.ChunkedArray | None,
                    length: int) -> pa.Array:  # fmt: skip
    """``position_of`` for a whole batch: ``source`` is the envelope's ``source`` struct column."""

    def digits(values, width: int) -> pa.Array:
        return pc.utf8_lpad(pc.cast(pc.cast(values, pa.int64()), pa.string()), width=width, padding="0")

    def field(name: str):
        if source is None or not pa.types.is_struct(source.type) or source.type.get_field_index(name) < 0:
            return None
        values = pc.struct_field(source, name)
        return None if pa.types.is_null(values.type) else values

    candidates = []
    lsn, file, pos, row = field("lsn"), field("file"), field("pos"), field("row")
    if lsn is not None:
        candidates.append(pc.binary_join_element_wise("pg:", digits(lsn, POSITION_DIGITS), ""))
    if file is not None and pos is not None:
        row_digits = digits(pc.fill_null(row, 0) if row is not None else pa.repeat(0, length), ROW_DIGITS)
        candidates.append(
            pc.binary_join_element_wise(
                "mysql:", pc.cast(file, pa.string()), ":", digits(pos, POSITION_DIGITS), ":", row_digits, ""
            )
        )
    if ts_ms is not None and not pa.types.is_null(ts_ms.type):
        candidates.append(pc.binary_join_element_wise("ts:", digits(ts_ms, POSITION_DIGITS), ""))
    if not candidates:
        return pa.nulls(length, pa.string())
    result = pc.coalesce(*candidates) if len(candidates) > 1 else candidates[0]
    return result.combine_chunks() if isinstance(result, pa.ChunkedArray) else result


def order_column(dataset: Dataset) -> str | None:
    """The column that orders a dataset's changes: ``ordering_field``, else Debezium's source position."""
    if dataset.ordering_field:
        return dataset.ordering_field
    return CDC_POSITION if dataset.format == "debezium" else None


def last_change_per_key(rows: pa.Table, key: Sequence[str], order: str | None) -> pa.Table:
    """One row per key: the last change by (order column, Kafka partition, Kafka offset); nulls sort last.

    Rows must have non-null keys (null keys are dead-lettered before this).
    """
    if rows.num_rows == 0:
        return rows
    names = ((order,) if order else ()) + ("_kafka_partition", "_kafka_offset")
    ordered = rows.take(pc.sort_indices(rows, sort_keys=[(name, "ascending", "at_end") for name in names]))
    indexed = ordered.select(list(key)).append_column("__position", pa.array(range(ordered.num_rows), pa.int64()))
    last = indexed.group_by(list(key), use_threads=False).aggregate([("__position", "max")])
    winners = last["__position_max"]
    return ordered.take(pc.take(winners, pc.sort_indices(winners)))


def with_table_columns(changes: pa.Table, table_schema: pa.Schema) -> pa.Table:
    """Every table column in the MERGE source: one a batch lacks is null there, so an update sets it null."""
    for field in table_schema:
        if field.name not in changes.column_names:
            changes = changes.append_column(pa.field(field.name, field.type), pa.nulls(changes.num_rows, field.type))
    return changes


def quote_datafusion(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_spark(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def merge_clauses(
    dataset: Dataset, key: Sequence[str], columns: Sequence[str], quote: Callable[[str], str]
) -> MergeClauses:
    """The MERGE of docs/DESIGN.md §9.2 for ``dataset`` (``columns``: the source's columns)."""
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
    order = order_column(dataset)
    if order:
        o = quote(order)
        guard = f"(t.{o} IS NULL OR s.{o} IS NULL OR s.{o} >= t.{o})"
    else:
        guard = "TRUE"
    if dataset.format != "debezium":
        return MergeClauses(on, guard, None, None, {}, None)
    is_delete = f"s.{quote(CDC_OP)} = '{DELETE_OP}'"
    not_delete = f"s.{quote(CDC_OP)} <> '{DELETE_OP}'"
    if dataset.delete_mode == "soft":
        # The delete's ``before`` image holds the row's last values (MySQL, Postgres with REPLICA IDENTITY
        # FULL): they win over what the table has, unless null (a key-only Postgres ``before``).
        updates = {
            name: f"s.{quote(name)}" if name in SOFT_DELETE_COLUMNS else f"COALESCE(s.{quote(name)}, t.{quote(name)})"
            for name in columns
            if name not in key
        }
        return MergeClauses(on, f"{not_delete} AND {guard}", None, f"{is_delete} AND {guard}", updates, None)
    return MergeClauses(on, f"{not_delete} AND {guard}", f"{is_delete} AND {guard}", None, {}, not_delete)
