"""Columns as the UI shows them (docs/DESIGN.md §13): the catalog's ``schema:`` descriptions, the columns known
before any run, the Delta schema after one (decimals, dates, timestamps, nested types), ``dagster/column_schema``."""

from __future__ import annotations

import datetime as dt
import decimal

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from ingest_platform.catalog import CatalogError
from ingest_platform.defs.assets import build_ingest_asset
from ingest_platform.engines.columns import INFERRED, catalog_columns, table_columns, type_name
from ingest_platform_tests.helpers import dataset_from_yaml

ORDERS = """
datasets:
  - name: orders
    source: shop
    topic: shop.orders
    format: json
    event_time_field: created_at
    partition_by: [currency, date]
    schema:
      total: {type: double, description: Order total in the order's currency.}
      currency: string
      order_id: {description: The shop's order number.}
      customer_id: {type: string}
"""


def test_schema_entries_take_a_description_beside_the_type():
    ds = dataset_from_yaml(ORDERS)
    assert ds.fields == {"total": "double", "currency": "string", "customer_id": "string"}  # types only
    assert ds.column_descriptions == {"total": "Order total in the order's currency.",
                                      "order_id": "The shop's order number."}  # fmt: skip


def test_a_description_sits_beside_the_other_type_options():
    ds = dataset_from_yaml("datasets:\n  - {name: p, source: s, topic: t, format: json, schema: {"
                           "paid_at: {type: timestamp, unit: ms, description: Capture time.}, "
                           "amount: {type: decimal, precision: 12, scale: 2, description: Amount.}}}\n")  # fmt: skip
    assert ds.fields["paid_at"].unit == "ms" and str(ds.fields["amount"]) == "decimal(12,2)"
    assert ds.column_descriptions == {"paid_at": "Capture time.", "amount": "Amount."}
    columns = {c.name: c for c in catalog_columns(ds)}
    assert columns["amount"].type == "decimal(12,2)" and columns["paid_at"].description == "Capture time."


@pytest.mark.parametrize("entry, field, words", [
    ("{total: {type: double, description: 3}}", "schema.total.description", "non-empty text"),
    ("{total: {type: double, description: ''}}", "schema.total.description", "non-empty text"),
    ("{total: {type: money, description: x}}", "schema.total", "'money'"),
])  # fmt: skip
def test_bad_descriptions_name_the_field(entry, field, words):
    with pytest.raises(CatalogError) as error:
        dataset_from_yaml(f"datasets:\n  - {{name: o, source: s, topic: t, format: json, schema: {entry}}}\n")
    assert error.value.field == field and words in error.value.problem


def test_descriptions_are_written_under_schema_only():
    with pytest.raises(CatalogError) as error:
        dataset_from_yaml("datasets:\n  - {name: o, source: s, topic: t, format: json, "
                          "column_descriptions: {total: x}}\n")  # fmt: skip
    assert error.value.field == "column_descriptions" and "under 'schema:'" in error.value.problem


def test_catalog_columns_before_any_run():
    columns = {c.name: c for c in catalog_columns(dataset_from_yaml(ORDERS))}
    assert list(columns) == ["total", "currency", "customer_id", "order_id", "_kafka_topic", "_kafka_partition",
                             "_kafka_offset", "_kafka_timestamp", "_kafka_key", "_event_time", "_ingested_at",
                             "date"]  # fmt: skip
    assert columns["total"].type == "double" and columns["total"].description.startswith("Order total")
    assert columns["order_id"].type == INFERRED and columns["order_id"].description == "The shop's order number."
    assert columns["_kafka_offset"].type == "long" and columns["_event_time"].type == "timestamp"
    assert [c for c in columns if columns[c].partition] == ["currency", "date"]
    assert columns["date"].type == "date" and "_event_time" in columns["date"].description


def test_debezium_tables_have_their_cdc_columns():
    soft = dataset_from_yaml("datasets:\n  - {name: users, source: inv, topic: t, format: debezium, mode: upsert,"
                             " delete_mode: soft}\n")  # fmt: skip
    names = [c.name for c in catalog_columns(soft)]
    assert names[-4:] == ["_cdc_op", "_cdc_position", "_cdc_deleted", "_cdc_deleted_at"]
    hard = soft.model_copy(update={"delete_mode": "hard"})
    assert [c.name for c in catalog_columns(hard)][-2:] == ["_cdc_op", "_cdc_position"]


def test_delta_types_read_as_text_generically(tmp_path):
    """Whatever an engine writes (issue 13's decimals, dates, timestamp units; nested JSON) reads back readable."""
    rows = pa.table({
        "amount": pa.array([decimal.Decimal("12.30")], pa.decimal128(12, 2)),
        "born": pa.array([dt.date(1990, 5, 1)]),
        "paid_at": pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us", tz="UTC")),
        "local": pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us")),
        "items": pa.array([[{"sku": "a", "qty": 1}]]),
        "attrs": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int32())),
        "currency": pa.array(["EUR"]),
    })  # fmt: skip
    write_deltalake(str(tmp_path / "t"), rows, partition_by=["currency"])
    table = DeltaTable(str(tmp_path / "t"))
    ds = dataset_from_yaml("datasets:\n  - {name: p, source: s, topic: t, format: json, partition_by: [currency], "
                           "schema: {currency: string, amount: {description: Paid amount.}}}\n")  # fmt: skip
    columns = {c.name: c for c in table_columns(table.schema().to_json(), table.metadata().partition_columns,
                                                ds.column_descriptions)}  # fmt: skip
    assert {name: c.type for name, c in columns.items()} == {
        "amount": "decimal(12,2)", "born": "date", "paid_at": "timestamp", "local": "timestamp_ntz",
        "items": "array<struct<sku: string, qty: long>>", "attrs": "map<string, integer>", "currency": "string",
    }  # fmt: skip
    assert columns["amount"].description == "Paid amount." and columns["currency"].partition
    assert type_name({"type": "udt"}) == "udt"


def test_the_asset_publishes_columns_and_table_name_at_definition_time():
    asset = build_ingest_asset(dataset_from_yaml(ORDERS))
    metadata = asset.specs_by_key[dg.AssetKey(["lake", "shop", "orders"])].metadata
    assert metadata["dagster/table_name"] == "lake.shop.orders"
    schema = metadata["dagster/column_schema"]
    assert isinstance(schema, dg.TableSchema)
    columns = {c.name: c for c in schema.columns}
    assert columns["total"].type == "double" and columns["total"].description.startswith("Order total")
    assert columns["_kafka_key"].type == "binary"
    assert columns["date"].tags == {"partition": ""} and columns["total"].tags == {}
