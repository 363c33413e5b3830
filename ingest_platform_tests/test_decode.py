"""Bulk JSON decoding and the table-schema rules, without a broker."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ingest_platform.engines.embedded.decode import (
    DecodeError,
    SchemaConflict,
    align_to_table,
    decode_json,
    normalize_for_delta,
    parse_timestamps,
)


def locate(index: int) -> str:
    return f"record #{index}"


def test_bulk_decode_keeps_order_and_infers_types():
    values = [b'{"id": %d, "name": "n%d", "tags": ["a"], "nested": {"x": 1.5}}' % (i, i) for i in range(1000)]
    table = decode_json(values, {}, locate)
    assert table.num_rows == 1000
    assert table["id"].to_pylist() == list(range(1000))
    assert table.schema.field("nested").type == pa.struct([("x", pa.float64())])


def test_pretty_printed_values_with_newlines_decode():
    table = decode_json([b'{\n  "a": 1\n}', b'{"a": 2}'], {}, locate)
    assert table["a"].to_pylist() == [1, 2]


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([b'{"a": 1}', b'{"a": '], "record #1: value is not valid JSON"),
        ([b'{"a": 1}', b"[1, 2]"], "record #1: value must be a JSON object, got list"),
        ([b'{"a": 1}{"a": 2}', b'{"a": 3}'], "record #0: value is not valid JSON"),
        ([b'{"a": 1}', b'{"a": "one"}'], "Column(/a) changed from number to string"),
        ([b'{"_kafka_offset": 1}'], "reserved"),
    ],
)
def test_bad_values_name_the_record(values, words):
    with pytest.raises(DecodeError) as raised:
        decode_json(values, {}, locate)
    assert words in str(raised.value)


def test_declared_types_win_over_inference():
    table = decode_json([b'{"amount": 1}', b'{"amount": 2}'], {"amount": "double", "at": "timestamp"}, locate)
    assert table.schema.field("amount").type == pa.float64()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["2026-11-25T10:00:00Z", "2026-11-25T12:00:00+02:00"], ["2026-11-25T10:00:00", "2026-11-25T10:00:00"]),
        (["2026-11-25 10:00:00", "2026-11-25"], ["2026-11-25T10:00:00", "2026-11-25T00:00:00"]),
        ([1795600800000, 1795600800], ["2026-11-25T10:00:00", "2026-11-25T10:00:00"]),
    ],
)
def test_event_times_parse_to_utc_micros(raw, expected):
    parsed = parse_timestamps(pa.chunked_array([pa.array(raw)]), "at")
    assert parsed.type == pa.timestamp("us", tz="UTC")
    assert [v.strftime("%Y-%m-%dT%H:%M:%S") for v in parsed.to_pylist()] == expected


def test_unparseable_event_time_names_the_record():
    with pytest.raises(DecodeError, match=r"record #1: field 'at' is not an ISO-8601 timestamp: 'soon'"):
        parse_timestamps(pa.chunked_array([pa.array(["2026-11-25T10:00:00Z", "soon"])]), "at", locate)


def test_normalize_drops_all_null_columns_and_types_empty_lists():
    table = normalize_for_delta(decode_json([b'{"a": 1, "gone": null, "l": []}'], {}, locate))
    assert table.column_names == ["a", "l"]
    assert table.schema.field("l").type == pa.list_(pa.string())


def test_align_widens_ints_into_a_double_column_and_keeps_new_columns():
    batch = pa.table({"amount": pa.array([1, 2]), "new": pa.array(["x", "y"])})
    aligned = align_to_table(batch, pa.schema([("amount", pa.float64())]), "records t[0] 0..1")
    assert aligned.schema.field("amount").type == pa.float64()
    assert aligned.column_names == ["amount", "new"]


def test_align_refuses_a_narrowing_change_and_names_the_field():
    batch = pa.table({"amount": pa.array([1.5])})
    with pytest.raises(SchemaConflict) as raised:
        align_to_table(batch, pa.schema([("amount", pa.int64())]), "records t[0] 7..7")
    assert "field 'amount' has type double in records t[0] 7..7" in str(raised.value)
    assert "stores it as int64" in str(raised.value)


def test_align_accepts_nested_types_in_another_field_order_and_item_name():
    """Spark writes struct fields sorted by name and list items named 'element': same data, same table."""
    batch = pa.table({"items": pa.array([[{"sku": "a", "qty": 1}]])})
    spark_type = pa.list_(pa.field("element", pa.struct([("price", pa.float64()), ("qty", pa.int64()),
                                                          ("sku", pa.string())])))
    aligned = align_to_table(batch, pa.schema([("items", spark_type)]), "records")
    assert aligned.schema.field("items").type == spark_type
    assert aligned["items"].to_pylist() == [[{"price": None, "qty": 1, "sku": "a"}]]


def test_align_never_drops_a_new_nested_field():
    batch = pa.table({"s": pa.array([{"x": 1, "new": 2}])})
    aligned = align_to_table(batch, pa.schema([("s", pa.struct([("x", pa.int64())]))]), "records")
    assert aligned["s"].to_pylist() == [{"x": 1, "new": 2}]  # left for Delta's schema merge to add
