"""Declared types (catalog ``schema:`` and Kafka Connect schemas) -> Arrow values, and the Connect mapping."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from ingest_platform.catalog import FieldType
from ingest_platform.engines import connect_schema
from ingest_platform.engines.embedded.typed_values import arrow_type, convert, read_type


def b64(unscaled: int, size: int | None = None) -> str:
    size = size or max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


def test_connect_decimal_bytes_become_exact_decimals_and_bad_ones_are_named():
    kind = FieldType("decimal", precision=12, scale=2, encoding="base64")
    values = pa.array([b64(507069464), b64(-350), b64(0), None, "not base64!", b64(10**12)])
    converted, problems = convert(values, kind, "balance")
    assert converted.type == pa.decimal128(12, 2)
    assert converted.to_pylist() == [Decimal("5070694.64"), Decimal("-3.50"), Decimal("0.00"), None, None, None]
    assert sorted(problems) == [4, 5]
    assert "field 'balance'" in problems[4] and "decimal(12,2)" in problems[4]
    assert "too many digits" in problems[5]
    assert base64.b64decode("HjlEGA==") == (507069464).to_bytes(4, "big")  # the value


def test_catalog_decimal_reads_numbers_and_text_exactly_and_rejects_rounding():
    kind = FieldType.parse("decimal(12,2)")
    converted, problems = convert(pa.array([12.5, 0.1, 3.14159]), kind, "price")  # numbers inferred as double
    assert converted.to_pylist()[:2] == [Decimal("12.50"), Decimal("0.10")] and list(problems) == [2]
    converted, problems = convert(pa.array(["5070694.64", "x", "-0.01"]), kind, "price")
    assert converted.to_pylist() == [Decimal("5070694.64"), None, Decimal("-0.01")] and list(problems) == [1]


def test_variable_scale_decimal():
    kind = connect_schema.field_type({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"}, "n")
    values = pa.array([{"scale": 3, "value": b64(-12345)}, None])
    converted, problems = convert(values, kind, "n")
    assert converted.type == pa.decimal128(38, 18) and converted[0].as_py() == Decimal("-12.345") and not problems


@pytest.mark.parametrize(
    "unit,value,expected",
    [
        ("ms", 1709210096789, datetime(2024, 2, 29, 12, 34, 56, 789000, timezone.utc)),
        ("ms", -1, datetime(1969, 12, 31, 23, 59, 59, 999000, timezone.utc)),
        ("us", 1709210096789123, datetime(2024, 2, 29, 12, 34, 56, 789123, timezone.utc)),
        ("ns", 1709210096789123999, datetime(2024, 2, 29, 12, 34, 56, 789123, timezone.utc)),
        ("ns", -1, datetime(1969, 12, 31, 23, 59, 59, 999999, timezone.utc)),
        ("s", 86400, datetime(1970, 1, 2, tzinfo=timezone.utc)),
    ],
)
def test_epoch_timestamps_by_unit(unit, value, expected):
    kind = FieldType("timestamp", unit=unit)
    converted, problems = convert(pa.array([value]), kind, "at")
    assert converted.to_pylist() == [expected] and not problems


def test_iso_timestamps_dates_from_days_and_text_booleans_from_flags():
    at, problems = convert(pa.array(["2026-11-29T23:06:59.629179Z", "2026-01-01 10:00:00", "yesterday"]),
                           FieldType("timestamp"), "updated_at")  # fmt: skip
    assert at.to_pylist()[:2] == [datetime(2026, 11, 29, 23, 6, 59, 629179, timezone.utc),
                                  datetime(2026, 1, 1, 10, tzinfo=timezone.utc)]  # fmt: skip
    assert list(problems) == [2] and "ISO-8601" in problems[2]
    days, problems = convert(pa.array([5673, -7305, None]), FieldType("date"), "birthday")
    assert days.to_pylist() == [date(1985, 7, 14), date(1950, 1, 1), None] and not problems
    flags, problems = convert(pa.array([1, 0, 2, None], pa.int16()), FieldType("boolean"), "is_active")
    assert flags.to_pylist() == [True, False, None, None] and list(problems) == [2]
    assert "0 or 1" in problems[2]


def test_base64_binary_and_times_as_text():
    token, problems = convert(pa.array(["AA==", "3q2+7w==", "@@"]), FieldType("binary", encoding="base64"), "t")
    assert token.to_pylist() == [b"\x00", b"\xde\xad\xbe\xef", None] and list(problems) == [2]
    raw, _ = convert(pa.array(["AA=="]), FieldType("binary"), "t")  # no encoding: the text's bytes (as before)
    assert raw.to_pylist() == [b"AA=="]
    times, _ = convert(pa.array([45296789123, -1_000_000, 3_020_399_000_000]), FieldType("time", unit="us"), "t")
    assert times.to_pylist() == ["12:34:56.789123", "-00:00:01.000000", "838:59:59.000000"]


def test_a_value_of_the_wrong_json_type_is_reported_not_raised():
    converted, problems = convert(pa.array([True, None]), FieldType("date"), "birthday")
    assert converted.to_pylist() == [None, None] and problems == {0: "field 'birthday' has JSON type boolean, "
                                                                     "not a date"}  # fmt: skip


def test_connect_schema_maps_semantic_types_and_ignores_mixed_type_defaults():
    row = [
        {"type": "int64", "optional": False, "field": "id"},
        {"type": "string", "optional": False, "name": "io.debezium.data.Enum", "default": "free", "field": "tier"},
        {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "default": "AA==",
         "parameters": {"scale": "2", "connect.decimal.precision": "12"}, "field": "balance"},
        {"type": "int16", "default": 1, "field": "is_active"},
        {"type": "int64", "name": "io.debezium.time.Timestamp", "default": 946684800000, "field": "created_at"},
        {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "default": "1970-01-01T00:00:00Z",
         "field": "updated_at"},
        {"type": "int32", "name": "io.debezium.time.Date", "field": "birthday"},
        {"type": "int64", "name": "io.debezium.time.MicroTime", "field": "opens"},
        {"type": "string", "name": "io.debezium.data.Json", "field": "attributes"},
        {"type": "bytes", "name": "io.debezium.data.Bits", "field": "flags"},
        {"type": "array", "items": {"type": "float32"}, "field": "scores"},
        {"type": "int32", "name": "org.apache.kafka.connect.data.Date", "field": "d"},
        {"type": "int64", "name": "io.debezium.time.NanoTimestamp", "field": "n"},
    ]  # fmt: skip
    image = {"type": "struct", "fields": row, "optional": True, "name": "x.Value"}
    envelope = {"type": "struct", "fields": [{**image, "field": "before"}, {**image, "field": "after"},
                                             {"type": "string", "field": "op"}]}  # fmt: skip
    value = json.dumps({"schema": envelope, "payload": {"op": "c", "after": {"id": 1}}}, separators=(",", ":"))
    wrapped = connect_schema.split(value.encode())
    assert json.loads(wrapped.payload) == {"op": "c", "after": {"id": 1}}
    types = connect_schema.SchemaCache().image_types(wrapped.schema)
    assert {name: arrow_type(kind) for name, kind in types.items()} == {
        "id": pa.int64(), "tier": pa.string(), "balance": pa.decimal128(12, 2), "is_active": pa.int16(),
        "created_at": pa.timestamp("us", tz="UTC"), "updated_at": pa.timestamp("us", tz="UTC"),
        "birthday": pa.date32(), "opens": pa.string(), "attributes": pa.string(), "flags": pa.binary(),
        "scores": pa.list_(pa.float32()), "d": pa.date32(), "n": pa.timestamp("us", tz="UTC"),
    }  # fmt: skip
    assert read_type(types["created_at"], exact=True) == pa.int64()
    assert read_type(types["updated_at"], exact=True) == pa.string()
    assert read_type(types["balance"], exact=True) is None  # base64 text, or a number (decimal.format=NUMERIC)
    # Spaces or another key order: still split (through a parse); a bare event is not wrapped.
    spaced = json.dumps({"payload": {"op": "d"}, "schema": envelope}).encode()
    assert json.loads(connect_schema.split(spaced).payload) == {"op": "d"}
    assert connect_schema.split(b'{"op":"c","after":{"schema":1,"payload":2}}') is None


def test_a_connect_map_is_named_as_unsupported():
    with pytest.raises(connect_schema.ConnectSchemaError, match="field 'tags'"):
        connect_schema.image_types({"type": "struct", "fields": [{"type": "map", "field": "tags"}]})
