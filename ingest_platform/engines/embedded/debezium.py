"""Debezium change events (decoded by Arrow) -> row images, ops, positions (docs/DESIGN.md §9.1).

Works on whole batches: the envelope columns (``op``, ``before``, ``after``, ``source``, ``ts_ms``; the JSON
converter's wrapper is split off before, ``connect_schema.split``) become one row image per event (``after``, or
``before`` for a delete), and the problems of single events are returned by row for the dead-letter table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ingest_platform.engines.changes import APPLIED_OPS, DELETE_OP, position_column
from ingest_platform.engines.embedded.decode import DecodeError, normalize_for_delta


@dataclass
class ChangeEvents:
    images: pa.Table  # one row per event: the row image's fields (all null for a bad event)
    op: pa.Array  # string
    position: pa.Array  # string, changes.position_of
    event_ms: pa.Array  # int64: source.ts_ms, else the envelope's ts_ms (null when neither)
    bad: dict[int, str]  # row -> why the event cannot be applied


def read_events(envelopes: pa.Table) -> ChangeEvents:
    """Row images, ops, positions and per-event problems of a batch of decoded envelopes."""
    table = envelopes
    n = table.num_rows
    bad: dict[int, str] = {}

    def column(name: str) -> pa.Array | None:
        if name not in table.column_names:
            return None
        values = table[name].combine_chunks()
        return None if pa.types.is_null(values.type) else values

    op = column("op")
    if op is None or not pa.types.is_string(op.type):
        op = pa.nulls(n, pa.string()) if op is None else pc.cast(op, pa.string())
    for row, value in zip(range(n), op.to_pylist()):
        if row in bad:
            continue
        if value is None:
            bad[row] = "not a Debezium change event: no 'op' field"
        elif value not in APPLIED_OPS:
            bad[row] = f"unknown Debezium op '{value}' (only c, r, u and d change rows)"
    is_delete = pc.fill_null(pc.equal(op, DELETE_OP), False)
    images = _images(column("before"), column("after"), is_delete, n)
    after_missing = pc.and_(pc.invert(is_delete), _null_struct(column("after"), n))
    for row in _rows(after_missing):
        bad.setdefault(row, "change event without an 'after' row image")
    source = column("source")
    ts_ms = column("ts_ms")
    source_ms = pc.struct_field(source, "ts_ms") if _has_field(source, "ts_ms") else None
    event_ms = _coalesce_int(source_ms, ts_ms, n)
    return ChangeEvents(images, op, position_column(source, ts_ms, n), event_ms, bad)


def fill_key_from_message(images: pa.Table, keys: pa.Table) -> tuple[pa.Table, tuple[str, ...]]:
    """Key columns from the message keys (decoded, unwrapped): their names, and values the images lack."""
    names = tuple(f.name for f in keys.schema if not pa.types.is_null(f.type))
    for name in names:
        from_key = keys[name]
        if name in images.column_names:
            current = images[name]
            if current.type != from_key.type:
                from_key = pc.cast(from_key, current.type)
            images = images.set_column(images.column_names.index(name), name, pc.coalesce(current, from_key))
        else:
            images = images.append_column(name, from_key)
    return images, names


def _images(before: pa.Array | None, after: pa.Array | None, is_delete: pa.Array, n: int) -> pa.Table:
    """``after``'s fields, with ``before``'s for deletes; fields only one image has are null in the other."""
    before_fields = _fields(before)
    after_fields = _fields(after)
    names = list(after_fields) + [name for name in before_fields if name not in after_fields]
    columns = {}
    for name in names:
        a, b = after_fields.get(name), before_fields.get(name)
        kind = _common_type(name, a.type if a is not None else None, b.type if b is not None else None)
        a = pc.cast(a, kind) if a is not None else pa.nulls(n, kind)
        b = pc.cast(b, kind) if b is not None else pa.nulls(n, kind)
        columns[name] = pc.if_else(is_delete, b, a)
    return normalize_for_delta(pa.table(columns)) if columns else pa.table({})


def _fields(image: pa.Array | None) -> dict[str, pa.Array]:
    if image is None or not pa.types.is_struct(image.type):
        return {}
    return {field.name: child for field, child in zip(image.type, image.flatten())}  # null where the image is


def _common_type(name: str, a: pa.DataType | None, b: pa.DataType | None) -> pa.DataType:
    kinds = [k for k in (a, b) if k is not None and not pa.types.is_null(k)]
    if not kinds:
        return pa.null()
    if len(kinds) == 1 or kinds[0] == kinds[1]:
        return kinds[0]
    if all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds):
        return pa.float64()
    raise DecodeError(f"field '{name}' has type {a} in 'after' images and {b} in 'before' images")


def _null_struct(image: pa.Array | None, n: int) -> pa.Array:
    if image is None:
        return pa.array([True] * n, pa.bool_())
    return image.is_null()


def _has_field(struct: pa.Array | None, name: str) -> bool:
    return struct is not None and pa.types.is_struct(struct.type) and struct.type.get_field_index(name) >= 0


def _coalesce_int(first: pa.Array | None, second: pa.Array | None, n: int) -> pa.Array:
    parts = [pc.cast(p, pa.int64()) for p in (first, second) if p is not None and not pa.types.is_null(p.type)]
    if not parts:
        return pa.nulls(n, pa.int64())
    return pc.coalesce(*parts) if len(parts) > 1 else parts[0]


def _rows(mask: pa.Array) -> Sequence[int]:
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
