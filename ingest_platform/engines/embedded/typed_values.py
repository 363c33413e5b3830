"""Declared column types -> Arrow: what the JSON reader is told, and how read values become the column type.

A declared type (the catalog's ``schema:``, or a Kafka Connect schema mapped by ``engines/connect_schema.py``)
is a ``FieldType``: the column's type and how the JSON holds it (docs/DESIGN.md §9.5). ``read_type`` is the
Arrow type the bulk JSON reader gets for the field — exact when one JSON form is certain, None (infer) when
the form varies (a timestamp may be ISO text or an epoch number) — and ``convert`` turns the read column into
``arrow_type``. Conversions are vectorised; a value that does not convert is set null and reported by row
with the reason, so the caller dead-letters its record or fails naming it. No Arrow error escapes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation

import pyarrow as pa
import pyarrow.compute as pc

from ingest_platform.catalog import FieldType

UTC_MICROS = pa.timestamp("us", tz="UTC")
_UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
_SIMPLE = {
    "string": pa.string(), "long": pa.int64(), "integer": pa.int32(), "short": pa.int16(), "byte": pa.int8(),
    "double": pa.float64(), "float": pa.float32(), "boolean": pa.bool_(), "date": pa.date32(),
    "timestamp": UTC_MICROS, "binary": pa.binary(), "time": pa.string(),
}  # fmt: skip
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

Problems = dict[int, str]  # row -> why its value does not convert


def arrow_type(kind: FieldType) -> pa.DataType:
    """The column's Arrow type (what the Delta table stores)."""
    kind = FieldType.parse(kind)
    if kind.kind == "decimal":
        return pa.decimal128(kind.precision, kind.scale)
    if kind.kind == "struct":
        return pa.struct([pa.field(name, arrow_type(child)) for name, child in (kind.children or {}).items()])
    if kind.kind == "array":
        return pa.list_(arrow_type(kind.element))
    return _SIMPLE[kind.kind]


def read_type(kind: FieldType, exact: bool) -> pa.DataType | None:
    """The Arrow type the JSON reader is given for the field, or None to let it infer the JSON form.

    ``exact``: the type comes from a Connect schema, so the JSON form is known (an epoch number, ISO text,
    base64 text…); a catalog type accepts several forms and reads the ones that vary by inference.
    """
    kind = FieldType.parse(kind)
    k = kind.kind
    if k in ("string", "long", "integer", "short", "byte", "double", "float"):
        return _SIMPLE[k]
    if k == "boolean":
        return pa.bool_() if exact else None  # the catalog's boolean also reads 0/1
    if k == "binary":
        return pa.string()  # base64 text, or (catalog, no encoding) the text's UTF-8 bytes
    if k == "decimal":
        # As they come (text, base64, a number: Connect's Decimal is a number with decimal.format=NUMERIC), then
        # converted here: Arrow's own decimal reading would not say which field a bad value is in.
        return None
    if k in ("timestamp", "time"):
        if exact:
            return pa.int64() if kind.unit else pa.string()
        return None
    if k == "date":
        return pa.int32() if exact else None
    if k == "struct":
        children = [(name, read_type(child, exact)) for name, child in (kind.children or {}).items()]
        return pa.struct([pa.field(name, t) for name, t in children if t is not None])
    if k == "array":
        element = read_type(kind.element, exact)
        return pa.list_(element) if element is not None else None
    return None


def convert(column: pa.Array | pa.ChunkedArray, kind: FieldType, name: str) -> tuple[pa.Array, Problems]:
    """``column`` (as read) as ``arrow_type(kind)``; values that do not convert are null, with their rows."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = FieldType.parse(kind)
    target = arrow_type(kind)
    source = column.type
    if pa.types.is_null(source):
        return pa.nulls(len(column), target), {}
    if source == target and kind.kind != "binary":
        return column, {}
    k = kind.kind
    try:
        if k == "decimal":
            return _decimal(column, kind, target, name)
        if k == "timestamp":
            return _timestamp(column, kind, name)
        if k == "date":
            return _date(column, name)
        if k == "boolean":
            return _boolean(column, name)
        if k == "binary":
            return _binary(column, kind, name)
        if k == "time":
            return _time(column, kind, name)
    except _ARROW_ERRORS as error:  # a conversion this module did not foresee: still named, never raw
        return pa.nulls(len(column), target), _every_valid_row(column, f"field '{name}' cannot be read as "
                                                                       f"{kind}: {error}")  # fmt: skip
    return _cast(column, target, name, kind)


# -- conversions ----------------------------------------------------------------------------------------------


def _cast(column: pa.Array, target: pa.DataType, name: str, kind: FieldType) -> tuple[pa.Array, Problems]:
    """A safe Arrow cast; on failure the rows whose values do not cast are found one by one."""
    try:
        return pc.cast(column, target), {}
    except _ARROW_ERRORS:
        pass
    return _per_value(column, target, name, kind, lambda value: pc.cast(pa.array([value], column.type), target)[0])


def _per_value(column: pa.Array, target: pa.DataType, name: str, kind: FieldType,
               one: Callable[[object], object]) -> tuple[pa.Array, Problems]:  # fmt: skip
    out: list[object] = []
    problems: Problems = {}
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            out.append(None)
            continue
        try:
            converted = one(value)
            out.append(converted.as_py() if isinstance(converted, pa.Scalar) else converted)
        except (*_ARROW_ERRORS, ValueError, TypeError, OverflowError, InvalidOperation, binascii.Error):
            out.append(None)
            problems[row] = f"field '{name}' has value {_show(value)}, which is not a valid {kind}"
    return pa.array(out, target), problems


def _decimal(column: pa.Array, kind: FieldType, target: pa.DataType, name: str) -> tuple[pa.Array, Problems]:
    source = column.type
    if pa.types.is_string(source) or pa.types.is_large_string(source):
        if kind.encoding == "base64":
            return _decimal_from_base64(column, kind, target, name)
        return _cast(column, target, name, kind)
    if pa.types.is_struct(source) and kind.encoding == "variable_scale":
        return _per_value(column, target, name, kind, lambda v: _fit(_variable_scale(v), kind))
    if pa.types.is_floating(source):  # a JSON number with a fraction: its shortest text is what was sent
        return _per_value(column, target, name, kind, lambda v: _fit(Decimal(repr(v)), kind))
    if pa.types.is_integer(source) or pa.types.is_decimal(source):
        return _cast(column, target, name, kind)
    return _wrong_form(column, target, name, f"not a {kind}")


_WIDE = Context(prec=80)  # Decimal's default 28 digits is below decimal(38, s)


def _fit(value: Decimal, kind: FieldType) -> Decimal:
    """``value`` at the column's scale, exactly (no rounding), within its precision; else ValueError."""
    scaled = value.quantize(Decimal(1).scaleb(-kind.scale), context=_WIDE)
    if scaled != value or abs(scaled.scaleb(kind.scale, context=_WIDE)) >= 10**kind.precision:
        raise ValueError("does not fit")
    return scaled


def _variable_scale(value: dict) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(value["value"], validate=True), "big", signed=True)
    return Decimal(unscaled).scaleb(-int(value["scale"]), context=_WIDE)


def _decimal_from_base64(column: pa.Array, kind: FieldType, target: pa.DataType,
                         name: str) -> tuple[pa.Array, Problems]:  # fmt: skip
    """Connect's Decimal bytes: base64 of the unscaled value, big-endian two's complement, at the column's
    scale. Built straight into decimal128's 16-byte little-endian buffer."""
    limit = 10**kind.precision
    decode, from_bytes = base64.b64decode, int.from_bytes
    words: list[bytes] = []
    problems: Problems = {}
    zero = bytes(16)
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            words.append(zero)
            continue
        try:
            unscaled = from_bytes(decode(value, validate=True), "big", signed=True)
        except (binascii.Error, ValueError):
            unscaled = None
        if unscaled is None or not -limit < unscaled < limit:
            words.append(zero)
            problems[row] = (f"field '{name}' has value {_show(value)}, which is not a {kind} in Connect's base64 "
                             "form" + ("" if unscaled is None else f" (unscaled {unscaled} has too many digits)"))
            continue
        words.append(unscaled.to_bytes(16, "little", signed=True))
    validity = column.is_valid()
    if problems:
        validity = pc.and_(validity, pa.array([row not in problems for row in range(len(column))]))
    mask = pc.invert(validity)
    array = pa.Array.from_buffers(target, len(column), [None, pa.py_buffer(b"".join(words))])
    return pc.if_else(mask, pa.scalar(None, target), array), problems


def _timestamp(column: pa.Array, kind: FieldType, name: str) -> tuple[pa.Array, Problems]:
    source = column.type
    if pa.types.is_timestamp(source):
        return pc.cast(column, pa.timestamp("us", tz=source.tz or "UTC")).cast(UTC_MICROS), {}
    if pa.types.is_floating(source) and kind.unit:
        scale = 1e-3 if kind.unit == "ns" else float(_UNIT_MICROS[kind.unit])
        return pc.cast(pc.cast(pc.multiply(column, scale), pa.int64(), safe=False), UTC_MICROS), {}
    if pa.types.is_integer(source) and kind.unit:
        micros = pc.cast(column, pa.int64())
        if kind.unit == "ns":
            micros = pc.divide(pc.subtract(micros, pc.if_else(pc.less(micros, 0), 999, 0)), 1000)  # floor
        else:
            micros = pc.multiply_checked(micros, _UNIT_MICROS[kind.unit])
        return pc.cast(micros, pa.int64()).cast(UTC_MICROS), {}
    if pa.types.is_integer(source) or pa.types.is_floating(source):
        as_float = pc.cast(column, pa.float64())  # no unit: seconds, or milliseconds above 1e11 (§3)
        micros = pc.if_else(pc.greater(pc.abs(as_float), 1e11), pc.multiply(as_float, 1e3), pc.multiply(as_float, 1e6))
        return pc.cast(pc.cast(micros, pa.int64()), UTC_MICROS), {}
    if pa.types.is_string(source) or pa.types.is_large_string(source):
        return _iso_timestamps(column, name, kind)
    return _wrong_form(column, UTC_MICROS, name, "not a timestamp")


_ZONE = r"(Z|[+-]\d\d:?\d\d)$"


def _iso_timestamps(column: pa.Array, name: str, kind: FieldType) -> tuple[pa.Array, Problems]:
    """ISO-8601 text with or without zone (none means UTC) or a bare date, in one vectorised cast."""
    has_zone = pc.match_substring_regex(column, _ZONE)
    has_time = pc.match_substring_regex(column, r"\d[T ]\d")
    suffix = pc.if_else(has_zone, "", pc.if_else(has_time, "Z", "T00:00:00Z"))
    zoned = pc.binary_join_element_wise(column, suffix, "")
    try:
        return pc.cast(zoned, UTC_MICROS), {}
    except _ARROW_ERRORS:
        pass
    converted, problems = _per_value(zoned, UTC_MICROS, name, kind, lambda v: pc.cast(pa.array([v]), UTC_MICROS)[0])
    originals = column.to_pylist()
    return converted, {row: f"field '{name}' is not an ISO-8601 timestamp: {_show(originals[row])}"
                       for row in problems}  # fmt: skip


def _date(column: pa.Array, name: str) -> tuple[pa.Array, Problems]:
    source = column.type
    kind = FieldType("date")
    if pa.types.is_integer(source):  # epoch days (Debezium's io.debezium.time.Date)
        days, problems = _cast(column, pa.int32(), name, kind)
        return days.cast(pa.date32()), problems
    if pa.types.is_timestamp(source):
        return pc.cast(column, pa.date32()), {}
    if pa.types.is_string(source) or pa.types.is_large_string(source):
        return _cast(column, pa.date32(), name, kind)
    return _wrong_form(column, pa.date32(), name, "not a date")


def _boolean(column: pa.Array, name: str) -> tuple[pa.Array, Problems]:
    source = column.type
    if pa.types.is_integer(source):  # TINYINT(1) and other 0/1 flags
        ok = pc.or_(pc.is_null(column), pc.is_in(column, pa.array([0, 1], source)))
        problems = {row: f"field '{name}' has value {column[row].as_py()}, which is not a boolean (0 or 1)"
                    for row in pc.indices_nonzero(pc.invert(ok)).to_pylist()}  # fmt: skip
        return pc.if_else(ok, pc.not_equal(column, 0), pa.scalar(None, pa.bool_())), problems
    return _wrong_form(column, pa.bool_(), name, "not a boolean")


def _binary(column: pa.Array, kind: FieldType, name: str) -> tuple[pa.Array, Problems]:
    source = column.type
    if pa.types.is_binary(source):
        return column, {}
    if not (pa.types.is_string(source) or pa.types.is_large_string(source)):
        return _wrong_form(column, pa.binary(), name, "not text")
    if kind.encoding != "base64":
        return pc.cast(column, pa.binary()), {}
    return _per_value(column, pa.binary(), name, kind, lambda v: base64.b64decode(v, validate=True))


def _time(column: pa.Array, kind: FieldType, name: str) -> tuple[pa.Array, Problems]:
    """A time of day as text ``HH:MM:SS.ffffff``; MySQL's TIME is a duration and may pass 24 h or be negative."""
    source = column.type
    if pa.types.is_string(source):
        return column, {}
    if not pa.types.is_integer(source) or not kind.unit:
        return _wrong_form(column, pa.string(), name, "not a time")
    per_micro = {"ms": 1000, "us": 1, "ns": None}[kind.unit]

    def text(value: int) -> str:
        micros = value * per_micro if per_micro else value // 1000
        sign, micros = ("-", -micros) if micros < 0 else ("", micros)
        seconds, fraction = divmod(micros, 1_000_000)
        return f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"

    return _per_value(column, pa.string(), name, kind, text)


# -- helpers --------------------------------------------------------------------------------------------------


def _wrong_form(column: pa.Array, target: pa.DataType, name: str, expected: str) -> tuple[pa.Array, Problems]:
    """Every value is of a JSON type the column cannot take: all null, every row reported."""
    reason = f"field '{name}' has JSON type {_json_name(column.type)}, {expected}"
    return pa.nulls(len(column), target), _every_valid_row(column, reason)


def _every_valid_row(column: pa.Array, reason: str) -> Problems:
    return dict.fromkeys(pc.indices_nonzero(column.is_valid()).to_pylist(), reason)


def _json_name(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_struct(kind):
        return "object"
    if pa.types.is_list(kind):
        return "array"
    return str(kind)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

