"""Kafka Connect's JSON converter wrapper and the Connect schema of a Debezium row (docs/DESIGN.md §9.1, §9.5).

With ``schemas.enable=true`` every record is ``{"schema": <Connect schema>, "payload": <value>}``. The schema
is the truth about the row's types: this module splits it from the payload **without parsing the payload**,
and maps the row image's Connect schema (the envelope's ``after``/``before`` struct) to catalog field types
(``FieldType``: the column type plus how the JSON holds the value). Both engines use it; the schema part is
never JSON-inferred (Connect puts ``default`` values of different JSON types into it).

The mapping (Connect type or semantic ``name`` → column type, JSON form):

* ``org.apache.kafka.connect.data.Decimal`` (bytes; ``scale``, ``connect.decimal.precision``) → decimal(p, s)
  from base64 two's-complement bytes, or a number (``decimal.format=NUMERIC``); without a precision: 38.
* ``io.debezium.data.VariableScaleDecimal`` (struct ``scale``, ``value``) → decimal(38, 18).
* ``io.debezium.time.Date``, ``org.apache.kafka.connect.data.Date`` (int32 epoch days) → date.
* ``io.debezium.time.Timestamp``/``MicroTimestamp``/``NanoTimestamp``, ``org.apache.kafka.connect.data.Timestamp``
  (epoch ms/µs/ns) and ``io.debezium.time.ZonedTimestamp`` (ISO-8601 text with offset) → timestamp (UTC, µs).
* ``io.debezium.time.Time``/``MicroTime``/``NanoTime``, ``org.apache.kafka.connect.data.Time`` (since midnight)
  and ``io.debezium.time.ZonedTime`` (text) → string ``HH:MM:SS.ffffff`` (Delta has no time-of-day type).
* ``io.debezium.data.Json``, ``Enum``, ``EnumSet``, ``Uuid``, ``Xml`` and other strings → string;
  ``io.debezium.data.Bits`` and bytes → binary (from base64); ``io.debezium.time.Year`` → int.
* int8/int16/int32/int64 → tinyint/smallint/int/bigint; float32/float64 → float/double; boolean → boolean.
* struct → struct and array → array of the mapped element types (semantic types inside them keep their JSON
  form); a map → string is not supported: the field is named in the error.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingest_platform.catalog import MAX_DECIMAL_PRECISION, FieldType

_PREFIX = b'{"schema":'
_SEPARATOR = b',"payload":'
#: Precision and scale of ``VariableScaleDecimal`` (no fixed scale in the source): Spark's default decimal.
VARIABLE_SCALE = (38, 18)
_CACHE_SIZE = 64


class ConnectSchemaError(ValueError):
    """A Connect schema the engines cannot map (the message names the field)."""


@dataclass(frozen=True)
class Wrapped:
    """A record value split into its Connect schema (raw JSON text) and its payload (raw JSON text)."""

    schema: bytes
    payload: bytes


def split(value: bytes) -> Wrapped | None:
    """The JSON converter's ``{"schema": …, "payload": …}`` split without parsing the payload; None when the
    value has no such wrapper (a bare event). Connect writes the two keys in this order without spaces; other
    layouts are re-serialised from a parse (slower, still correct)."""
    if value.startswith(_PREFIX):
        at = value.find(_SEPARATOR)  # a '"' inside a JSON string is escaped, so the first hit is the key
        end = value.rstrip().rfind(b"}")
        if at > 0 and end > at:
            return Wrapped(value[len(_PREFIX) : at], value[at + len(_SEPARATOR) : end])
    head = value[:64].lstrip()
    if not head.startswith(b"{") or b'"schema"' not in value or b'"payload"' not in value:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if isinstance(parsed, dict) and set(parsed) == {"schema", "payload"} and isinstance(parsed["payload"], dict):
        dump = json.dumps
        return Wrapped(dump(parsed["schema"]).encode(), dump(parsed["payload"], ensure_ascii=False).encode())
    return None


class SchemaCache:
    """Parsed row-image types by the schema's raw text: events of one table share a few schemas (one per DDL
    version), so a batch parses each once. Bounded (LRU, 64 schemas)."""

    def __init__(self) -> None:
        self._types: OrderedDict[bytes, dict[str, FieldType]] = OrderedDict()

    def image_types(self, schema: bytes) -> dict[str, FieldType]:
        types = self._types.get(schema)
        if types is None:
            try:
                parsed = json.loads(schema)
            except ValueError as error:
                raise ConnectSchemaError(f"the Connect schema is not valid JSON ({error})") from None
            types = image_types(parsed)
            self._types[schema] = types
            if len(self._types) > _CACHE_SIZE:
                self._types.popitem(last=False)
        else:
            self._types.move_to_end(schema)
        return types


def image_types(envelope: Mapping[str, Any]) -> dict[str, FieldType]:
    """Column types of the row image of a Debezium envelope schema (its ``after``, else ``before`` struct).
    A schema without an envelope (a plain row struct) is mapped as the row itself."""
    fields = {f.get("field"): f for f in envelope.get("fields") or [] if isinstance(f, Mapping)}
    image = fields.get("after") or fields.get("before")
    row = image if image is not None and image.get("type") == "struct" else envelope
    if row.get("type") != "struct":
        raise ConnectSchemaError(f"the Connect schema is a {row.get('type')!r}, not a struct of columns")
    return {field["field"]: field_type(field, field["field"]) for field in row.get("fields") or []}


_INTEGERS = {"int8": "byte", "int16": "short", "int32": "integer", "int64": "long"}
_FLOATS = {"float32": "float", "float64": "double", "float": "float", "double": "double"}
_TIMESTAMP_UNITS = {
    "io.debezium.time.Timestamp": "ms", "org.apache.kafka.connect.data.Timestamp": "ms",
    "io.debezium.time.MicroTimestamp": "us", "io.debezium.time.NanoTimestamp": "ns",
}  # fmt: skip
_TIME_UNITS = {
    "io.debezium.time.Time": "ms", "org.apache.kafka.connect.data.Time": "ms",
    "io.debezium.time.MicroTime": "us", "io.debezium.time.NanoTime": "ns",
}  # fmt: skip
_DATES = ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date")


def field_type(schema: Mapping[str, Any], path: str) -> FieldType:
    """The column type of one Connect field schema (``path`` names it in errors)."""
    kind, name = schema.get("type"), schema.get("name")
    parameters = schema.get("parameters") or {}
    if name == "org.apache.kafka.connect.data.Decimal":
        try:
            scale = int(parameters.get("scale", 0))
            precision = int(parameters.get("connect.decimal.precision", MAX_DECIMAL_PRECISION))
        except (TypeError, ValueError):
            raise ConnectSchemaError(f"field '{path}': Decimal parameters {parameters} are not numbers") from None
        if precision > MAX_DECIMAL_PRECISION or scale > precision:
            raise ConnectSchemaError(f"field '{path}': decimal({precision},{scale}) does not fit a Delta decimal "
                                     f"(precision at most {MAX_DECIMAL_PRECISION})")  # fmt: skip
        return FieldType("decimal", precision=precision, scale=scale, encoding="base64")
    if name == "io.debezium.data.VariableScaleDecimal":
        return FieldType("decimal", precision=VARIABLE_SCALE[0], scale=VARIABLE_SCALE[1], encoding="variable_scale")
    if name in _DATES:
        return FieldType("date")
    if name in _TIMESTAMP_UNITS:
        return FieldType("timestamp", unit=_TIMESTAMP_UNITS[name])
    if name == "io.debezium.time.ZonedTimestamp":
        return FieldType("timestamp")
    if name in _TIME_UNITS:
        return FieldType("time", unit=_TIME_UNITS[name])
    if name == "io.debezium.time.ZonedTime":
        return FieldType("time")
    if kind in _INTEGERS:
        return FieldType(_INTEGERS[kind])
    if kind in _FLOATS:
        return FieldType(_FLOATS[kind])
    if kind == "boolean":
        return FieldType("boolean")
    if kind == "string":
        return FieldType("string")
    if kind == "bytes":
        return FieldType("binary", encoding="base64")
    if kind == "struct":
        children = {f["field"]: field_type(f, f"{path}.{f['field']}") for f in schema.get("fields") or []}
        return FieldType("struct", children=children)
    if kind == "array":
        return FieldType("array", element=field_type(schema.get("items") or {}, f"{path}[]"))
    raise ConnectSchemaError(f"field '{path}' has Connect type {kind!r}{f' ({name})' if name else ''}, which the "
                             "platform does not map to a column type")  # fmt: skip
