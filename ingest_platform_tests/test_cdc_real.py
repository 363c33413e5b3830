"""A real Debezium pipeline: MariaDB 10.11 -> Kafka Connect 4.1.1 + debezium-connector-mariadb 3.5.0.Final ->
the session broker -> a ``format: debezium``, ``mode: upsert`` dataset (docs/DESIGN.md §9.5).

The ``cdc_source`` fixture (conftest) runs ``dev/real_cdc.py``'s workload once per session and publishes it with
and without the JSON converter's wrapper. Each table must equal ``SELECT *`` of the source, value for value,
with decimal, timestamp, date and boolean/smallint column types."""

from __future__ import annotations

from datetime import timezone

import pyarrow as pa
import pytest

from ingest_platform.dev import real_cdc
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.dead_letters import read_dead_letters
from ingest_platform_tests.cdc_helpers import cdc_dataset, reconciles
from ingest_platform_tests.helpers import read_table

pytestmark = [pytest.mark.kafka, pytest.mark.cdc_source, pytest.mark.slow]

UTC_MICROS = pa.timestamp("us", tz="UTC")
#: The column types both converter settings must give (the bare events through ``real_cdc.BARE_SCHEMA``).
COLUMN_TYPES = {
    "id": pa.int64(), "name": pa.string(), "tier": pa.string(), "balance": pa.decimal128(12, 2),
    "created_at": UTC_MICROS, "updated_at": UTC_MICROS, "birthday": pa.date32(), "score": pa.float64(),
    "notes": pa.string(), "attributes": pa.string(), "token": pa.binary(), "discount": pa.decimal128(5, 3),
}  # fmt: skip


def embedded_run(kafka, lake):
    from ingest_platform.engines.embedded.engine import EmbeddedEngine

    return lambda dataset: EmbeddedEngine(kafka, lake).run(dataset)


def expected_rows(cdc_source, is_active_boolean: bool) -> dict[int, dict]:
    """``SELECT *`` as the table must hold it: DATETIME and TIMESTAMP (read in the server's UTC) as UTC."""
    rows = {}
    for row in cdc_source.rows:
        row = dict(row)
        for name in ("created_at", "updated_at"):
            row[name] = row[name].replace(tzinfo=timezone.utc)
        row["is_active"] = bool(row["is_active"]) if is_active_boolean else row["is_active"]
        rows[row["id"]] = row
    return rows


def table_rows(lake, dataset, columns) -> dict[int, dict]:
    frame = read_table(lake.table_uri(dataset.table_path))
    return {row["id"]: row for row in frame.select(columns).to_dicts()}


def delta_types(lake, dataset) -> dict[str, pa.DataType]:
    schema = lake.open_table(dataset.table_path).schema().to_arrow()
    return {field.name: pa.field(field).type for field in schema}


def assert_equals_source(lake, dataset, cdc_source, is_active_boolean: bool) -> None:
    types = delta_types(lake, dataset)
    assert {name: types.get(name) for name in COLUMN_TYPES} == COLUMN_TYPES
    assert types["is_active"] == (pa.bool_() if is_active_boolean else pa.int16())
    expected = expected_rows(cdc_source, is_active_boolean)
    actual = table_rows(lake, dataset, cdc_source.columns)
    assert actual.keys() == expected.keys()
    mismatches = [(key, name, actual[key][name], value) for key, row in expected.items()
                  for name, value in row.items() if actual[key][name] != value]  # fmt: skip
    assert mismatches == []


@pytest.mark.parametrize("max_dlq_ratio", [0, 0.01])
def test_wrapped_events_are_typed_by_their_connect_schema(cdc_source, kafka, lake, max_dlq_ratio):
    """``schemas.enable=true``: the row types come from each event's Connect schema (no ``schema:`` in the
    catalog), in batches of 512 KB (the ALTER's new column arrives by MERGE); with dead-lettering allowed
    the same (nothing is bad)."""
    dataset = cdc_dataset(cdc_source.wrapped_topic, name="wrapped", max_batch_bytes=512 * 1024,
                          max_dlq_ratio=max_dlq_ratio)  # fmt: skip
    report = embedded_run(kafka, lake)(dataset)

    assert report.records == cdc_source.events and reconciles(report) and report.dead_lettered == 0
    assert len(report.commits) > 3 and report.skipped == cdc_source.by_op["d"]  # tombstones
    assert_equals_source(lake, dataset, cdc_source, is_active_boolean=False)


@pytest.mark.parametrize("max_dlq_ratio", [0, 0.01])
def test_bare_events_are_typed_by_the_catalog_schema(cdc_source, kafka, lake, max_dlq_ratio):
    """``schemas.enable=false``: base64 decimals, epoch-ms DATETIME, ISO TIMESTAMP, epoch-day DATE, 0/1
    TINYINT(1) and base64 VARBINARY, declared under ``schema:``."""
    dataset = cdc_dataset(cdc_source.bare_topic, name="bare", max_batch_bytes=128 * 1024,
                          max_dlq_ratio=max_dlq_ratio, schema=real_cdc.BARE_SCHEMA)  # fmt: skip
    report = embedded_run(kafka, lake)(dataset)

    assert report.records == cdc_source.events and reconciles(report) and report.dead_lettered == 0
    assert_equals_source(lake, dataset, cdc_source, is_active_boolean=True)


def test_a_wrong_declaration_fails_naming_record_and_field_or_dead_letters(cdc_source, kafka, lake):
    """``balance: decimal(12,2)`` without ``encoding: base64`` on Debezium's base64 decimals: the run fails
    naming dataset, record and field (nothing committed); allowing every record to be dead-lettered, each
    goes to the DLQ with the reason."""
    schema = {**real_cdc.BARE_SCHEMA, "balance": "decimal(12,2)"}
    dataset = cdc_dataset(cdc_source.bare_topic, name="wrong", schema=schema)
    with pytest.raises(IngestError) as failure:
        embedded_run(kafka, lake)(dataset)
    message = str(failure.value)
    assert "dataset 'wrong'" in message and f"{cdc_source.bare_topic}[" in message and "offset" in message
    assert "field 'balance'" in message and "decimal(12,2)" in message and "Arrow" not in message
    assert lake.open_table(dataset.table_path) is None

    tolerant = cdc_dataset(cdc_source.bare_topic, name="tolerant", schema=schema, max_dlq_ratio=1)
    report = embedded_run(kafka, lake)(tolerant)
    letters = read_dead_letters(lake, tolerant)
    changes = cdc_source.events - cdc_source.by_op["d"]
    assert report.dead_lettered == letters.num_rows == changes
    assert all("field 'balance'" in reason and "decimal(12,2)" in reason for reason in letters["error"].to_pylist())


def test_a_value_the_column_cannot_hold_is_named(cdc_source, kafka, lake):
    """``balance: decimal(5,2)`` cannot hold the source's balances: dead-lettered with the unscaled digits."""
    dataset = cdc_dataset(cdc_source.wrapped_topic, name="narrow", schema={"balance": "decimal(5,2)"},
                          max_dlq_ratio=1)  # fmt: skip
    report = embedded_run(kafka, lake)(dataset)
    big = sum(1 for row in cdc_source.rows if abs(row["balance"]) >= 1000)
    assert big > 0 and report.dead_lettered >= big and reconciles(report)
    reasons = read_dead_letters(lake, dataset)["error"].to_pylist()
    assert all("field 'balance'" in reason and "decimal(5,2)" in reason for reason in reasons)


@pytest.mark.spark
@pytest.mark.parametrize("wrapped", [True, False], ids=["wrapped", "bare"])
def test_spark_engine_gives_the_same_tables(cdc_source, kafka, lake, spark, wrapped):
    """The Spark engine on the same events: the same types and values (``SELECT *``)."""
    from ingest_platform.engines.spark.engine import SparkEngine

    if wrapped:
        dataset = cdc_dataset(cdc_source.wrapped_topic, name="spark_wrapped")
    else:
        dataset = cdc_dataset(cdc_source.bare_topic, name="spark_bare", schema=real_cdc.BARE_SCHEMA)
    report = SparkEngine(kafka, lake, spark).run(dataset)
    assert report.records == cdc_source.events and reconciles(report) and report.dead_lettered == 0
    assert_equals_source(lake, dataset, cdc_source, is_active_boolean=not wrapped)
