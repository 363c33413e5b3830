"""JSON record values -> Arrow, in bulk, and the table-schema rules of docs/DESIGN.md §3.

Decoding joins a batch of values into newline-delimited JSON and lets Arrow's C++ reader parse it in one
call; only when that fails does it fall back to one value at a time, to name the offending record.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import pyarrow as pa
import pyarrow.json as pajson

from ingest_platform.catalog import FieldType, is_reserved
from ingest_platform.engines.embedded import typed_values

UTC_MICROS = typed_values.UTC_MICROS

_READ_BLOCK_BYTES = 16 << 20


class DecodeError(ValueError):
    """A record value could not be decoded; the message names the record's topic, partition and offset."""


class SchemaConflict(ValueError):
    """A field's type in new records differs from the table's; the message names the field and both types."""


def declared_schema(fields: Mapping[str, FieldType], known: Mapping[str, pa.DataType] | None = None,
                    exact: Mapping[str, FieldType] | None = None) -> pa.Schema:  # fmt: skip
    """The types Arrow's reader is given: ``known`` primitive types (the table's), then the declared ``fields``
    (catalog ``schema:``), whose JSON form may vary, then ``exact`` ones (a Connect schema: the form is known;
    a catalog type of the same field still decides the column, §9.5). A declared field whose form varies is
    left out: Arrow infers what it is and ``convert_declared`` converts it."""
    types = {name: kind for name, kind in (known or {}).items() if _is_primitive(kind)}
    for name, kind in fields.items():
        types.pop(name, None)
        read = typed_values.read_type(kind, exact=False)
        if read is not None:
            types[name] = read
    for name, kind in (exact or {}).items():
        types.pop(name, None)
        read = typed_values.read_type(kind, exact=True)
        if read is not None:
            types[name] = read
    return pa.schema(list(types.items()))


def _is_primitive(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or (pa.types.is_string(kind))
    )


def read_json_values(values: Sequence[bytes], explicit: pa.Schema) -> pa.Table:
    """Arrow's bulk JSON reader over the values (one per line); raises ``pa.ArrowInvalid`` as Arrow does."""
    payload = b"\n".join(values)
    # Values with raw newlines inside (pretty-printed JSON) need the slower reader mode.
    newlines_inside = payload.count(b"\n") != len(values) - 1
    block_size = max(_READ_BLOCK_BYTES, _largest(values) + 1)
    table = pajson.read_json(
        io.BytesIO(payload),
        read_options=pajson.ReadOptions(block_size=block_size),
        parse_options=pajson.ParseOptions(
            explicit_schema=explicit, unexpected_field_behavior="infer", newlines_in_values=newlines_inside
        ),
    )
    if table.num_rows != len(values):
        raise pa.ArrowInvalid(f"decoded {table.num_rows} rows from {len(values)} values")
    return table


def decode_json(values: Sequence[bytes], fields: Mapping[str, FieldType], locate: Callable[[int], str]) -> pa.Table:
    """One row per value. ``fields`` fixes types (catalog ``schema:``); ``locate(i)`` describes value ``i``."""
    try:
        table = read_json_values(values, declared_schema(fields))
    except pa.ArrowInvalid as error:
        raise_unreadable(values, locate, error)
    check_not_reserved(table.column_names)
    table, problems = convert_declared(table, fields)
    if problems:
        first = min(problems)
        raise DecodeError(f"{locate(first)}: {problems[first]}")
    return table


def raise_unreadable(
    values: Sequence[bytes], locate: Callable[[int], str], error: Exception, known: pa.Schema | None = None
) -> NoReturn:
    """The ``DecodeError`` for a batch Arrow could not read, naming the first bad value where possible.

    With ``known`` (the table's types), a value whose field does not fit its column is named with both types.
    """
    for index, value in enumerate(values):
        problem = _json_object_problem(value)
        if problem:
            raise DecodeError(f"{locate(index)}: {problem}: {value[:120]!r}")
    if known is not None and len(known):
        try:
            bad = decode_json_tolerant(values, known)[2]
        except DecodeError:
            bad = {}
        if bad:
            first = min(bad)
            raise DecodeError(f"{locate(first)}: {bad[first]}. Fix the producer, or declare the field's type under "
                              "'schema:' in the catalog.")  # fmt: skip
    payload_bytes = sum(len(v) + 1 for v in values)
    block_size = max(_READ_BLOCK_BYTES, _largest(values) + 1)
    # Arrow numbers rows within a block, so a row number names a record only for a one-block batch.
    _raise_for_first_bad_value(values, locate, str(error), rows_are_exact=payload_bytes <= block_size)
    raise DecodeError(f"the batch could not be decoded as JSON: {error}") from None


def check_not_reserved(names: Sequence[str]) -> None:
    for name in names:
        if is_reserved(name):
            raise DecodeError(f"records carry field '{name}', a name reserved for the engine's columns")


def decode_json_tolerant(values: Sequence[bytes], explicit: pa.Schema) -> tuple[pa.Table, list[int], dict[int, str]]:
    """Like ``decode_json``'s reading, but bad values are set aside instead of failing the batch.

    Bisects the batch: halves that Arrow reads are kept, a single value it cannot read is bad, with the
    reason. Returns (rows of the good values, their indices, {index: reason}). Only used after the bulk
    read failed and the dataset dead-letters (``max_dlq_ratio`` > 0), or when Arrow could not join the types
    it inferred block by block (a field null in the first 16 MB and an object later): it costs about
    log2(n) extra reads per bad value. Raises ``DecodeError`` when the good values disagree on an undeclared
    field's type.
    """
    tables: list[pa.Table] = []
    good: list[int] = []
    bad: dict[int, str] = {}

    def read(low: int, high: int) -> None:
        try:
            tables.append(read_json_values(values[low:high], explicit))
            good.extend(range(low, high))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            if high - low == 1:
                bad[low] = _why_unreadable(values[low], str(error), explicit)
            else:
                middle = (low + high) // 2
                read(low, middle)
                read(middle, high)

    if values:
        read(0, len(values))
    if not tables:
        return pa.table({}), good, bad
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise DecodeError(
            f"records disagree on a field's type: {error}. Declare the field's type under 'schema:' in the catalog."
        ) from None
    return table, good, bad


def _json_object_problem(value: bytes) -> str | None:
    try:
        parsed = json.loads(value)
    except ValueError as error:
        return f"value is not valid JSON ({error})"
    if not isinstance(parsed, dict):
        return f"value must be a JSON object, got {type(parsed).__name__}"
    return None


def _why_unreadable(value: bytes, arrow_error: str, explicit: pa.Schema) -> str:
    problem = _json_object_problem(value)
    if problem:
        return problem
    column = re.search(r"Column\((/[^)]*)\) changed from (\w+) to (\w+)", arrow_error)
    if column:
        path, _, got = column.groups()
        parts = path.strip("/").split("/")
        target = _type_at(explicit, parts)
        stores = f", the table stores {delta_type_name(target)}" if target is not None else ""
        return f"field '{parts[-1]}' has type {got}{stores}"
    return f"value does not fit the table's schema ({arrow_error})"


def _type_at(schema: pa.Schema, path: Sequence[str]) -> pa.DataType | None:
    """The type at a JSON path (``after/balance``) in an explicit reading schema, if it names one."""
    fields = {f.name: f.type for f in schema}
    kind = None
    for part in path:
        kind = fields.get(part)
        if kind is None:
            return None
        fields = {f.name: f.type for f in kind} if pa.types.is_struct(kind) else {}
    return kind


#: Arrow types by the names Delta and Spark give them, so both engines word a type mismatch the same way.
_DELTA_TYPE_NAMES = {
    pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint", pa.float32(): "float",
    pa.float64(): "double", pa.string(): "string", pa.large_string(): "string", pa.bool_(): "boolean",
    pa.date32(): "date", pa.binary(): "binary",
}  # fmt: skip


def delta_type_name(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_decimal(kind):
        return f"decimal({kind.precision},{kind.scale})"
    return _DELTA_TYPE_NAMES.get(kind, str(kind))


def _largest(values: Sequence[bytes]) -> int:
    return max((len(v) for v in values), default=0)


def _raise_for_first_bad_value(
    values: Sequence[bytes], locate: Callable[[int], str], reason: str, rows_are_exact: bool
) -> None:
    for index, value in enumerate(values):
        problem = _json_object_problem(value)
        if problem:
            raise DecodeError(f"{locate(index)}: {problem}: {value[:120]!r}")
    # Every value parses alone: the batch failed on a type change inside it (Arrow names the field and row).
    row = re.search(r"in row (\d+)", reason)
    exact = rows_are_exact and row is not None and int(row.group(1)) < len(values)
    where = f" (first at {locate(int(row.group(1)))})" if exact else ""
    raise DecodeError(
        f"records disagree on a field's type{where}: {reason}. Declare the field's type under 'schema:' in the catalog."
    )


def convert_declared(table: pa.Table, fields: Mapping[str, FieldType]) -> tuple[pa.Table, dict[int, str]]:
    """Declared fields as their column types (docs/DESIGN.md §9.5); values that do not convert are null and
    returned by row with the reason (the caller dead-letters the record or fails naming it)."""
    problems: dict[int, str] = {}
    for name, kind in fields.items():
        if name not in table.column_names:
            continue
        converted, bad = typed_values.convert(table[name], kind, name)
        for row, reason in bad.items():
            problems.setdefault(row, reason)
        table = table.set_column(table.column_names.index(name), pa.field(name, converted.type), converted)
    return table, problems


def parse_timestamps(column: pa.ChunkedArray, name: str, locate: Callable[[int], str] | None = None) -> pa.Array:
    """Timestamps (UTC, µs) from ISO-8601 strings (with or without zone; none means UTC), epoch seconds or
    milliseconds (numbers above 1e11 are milliseconds), or Arrow timestamps; the first bad value raises
    ``DecodeError`` naming the field (and the record, with ``locate``)."""
    converted, problems = typed_values.convert(column, FieldType("timestamp"), name)
    if problems:
        first = min(problems)
        raise DecodeError(f"{locate(first)}: {problems[first]}" if locate else problems[first])
    return converted


def normalize_for_delta(table: pa.Table) -> pa.Table:
    """Types Delta can store: drop all-null columns, give ``list<null>`` an element type, timestamps in µs UTC."""
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns):
        kind = field.type
        if pa.types.is_null(kind):
            continue
        fixed = _delta_type(kind)
        if fixed != kind:
            column = column.cast(fixed)
        columns.append(column)
        fields.append(pa.field(field.name, fixed))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _delta_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_null(kind):
        return pa.string()
    if pa.types.is_timestamp(kind):
        return UTC_MICROS
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(_delta_type(kind.value_type))
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _delta_type(f.type)) for f in kind])
    return kind


def align_to_table(batch: pa.Table, table_schema: pa.Schema | None, describe: str) -> pa.Table:
    """Cast ``batch`` to the table's column types; new columns stay (they are added as nullable columns).

    A column whose batch type cannot be represented in the table's type without changing it raises
    ``SchemaConflict`` naming the field. ``describe`` says which records the batch holds.
    """
    if table_schema is None:
        return batch
    existing = {field.name: field.type for field in table_schema}
    for index, field in enumerate(batch.schema):
        target = existing.get(field.name)
        if target is None or target == field.type:
            continue
        if _is_nested(field.type) and _is_nested(target) and not _fits(field.type, target):
            continue  # new nested fields: Delta's schema merge adds them; a real conflict fails the write
        if _fits(field.type, target):
            try:
                batch = batch.set_column(index, pa.field(field.name, target), batch[field.name].cast(target))
                continue
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        raise SchemaConflict(
            f"field '{field.name}' has type {field.type} in {describe}, but the table stores it as {target}. "
            f"Fix the producer, or declare the field's type under 'schema:' in the catalog."
        )
    return batch


def schema_differences(batch: pa.Schema, table: pa.Schema) -> tuple[list[str], dict[str, pa.DataType]]:
    """Top-level fields the table lacks, and fields whose batch type cannot be stored in the table's type
    (name -> the table's type). New fields inside structs are not counted (Delta's schema merge adds them).
    """
    existing = {field.name: field.type for field in table}
    new: list[str] = []
    changed: dict[str, pa.DataType] = {}
    for field in batch:
        target = existing.get(field.name)
        if target is None:
            new.append(field.name)
        elif field.type != target and not _fits(field.type, target):
            if not (_is_nested(field.type) and _is_nested(target)):
                changed[field.name] = target
    return new, changed


def salvage(column: pa.ChunkedArray | pa.Array, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """The values of a column whose batch type differs from the table's that still fit ``target`` one by one,
    and the rows that do not (for the dead-letter table). Numbers convert to numbers without loss (2.0 to
    a long, not 2.5) and strings to timestamps or dates (ISO-8601); nothing else does: a quoted number is
    not a number, as in Spark's JSON reader, so both engines dead-letter the same records.
    """
    values = column.to_pylist()
    source = column.type
    convertible = (_is_number(source) and _is_number(target)) or (
        pa.types.is_string(source) and (pa.types.is_timestamp(target) or pa.types.is_date(target))
    )
    out: list[object] = []
    bad: list[int] = []
    for row, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            if not convertible:
                raise pa.ArrowInvalid("not convertible")
            if pa.types.is_timestamp(target):
                out.append(parse_timestamps(pa.chunked_array([pa.array([value], source)]), "value")[0].as_py())
            else:
                out.append(pa.array([value], source).cast(target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, DecodeError):
            out.append(None)
            bad.append(row)
    return pa.array(out, target), bad


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _is_nested(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _fits(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether values of ``source`` can be stored as ``target`` without loss of meaning.

    Nested types fit when every field of ``source`` exists in ``target`` (any order; Spark writes struct
    fields sorted by name and names list items ``element``) with a fitting type; fields only ``target``
    has are filled with nulls. A field ``target`` lacks does not fit: casting would drop it.
    """
    if source == target:
        return True
    if pa.types.is_integer(source) and (pa.types.is_integer(target) or pa.types.is_floating(target)):
        return True
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return True
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        return True
    if pa.types.is_decimal(source) and pa.types.is_decimal(target):  # a widened DECIMAL column
        return target.scale >= source.scale and target.precision - target.scale >= source.precision - source.scale
    if pa.types.is_list(source) and pa.types.is_list(target):
        return _fits(source.value_type, target.value_type) or pa.types.is_null(source.value_type)
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        target_fields = {f.name: f.type for f in target}
        return all(f.name in target_fields and _fits(f.type, target_fields[f.name]) for f in source)
    return False
