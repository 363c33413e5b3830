"""The downstream pattern (docs/DESIGN.md §13): an asset that reads an ingested table, kept fresh by declarative
automation. Real broker, real tables; the automation condition evaluated with Dagster's own test helper."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

import dagster as dg
import pytest
from deltalake import DeltaTable

from ingest_platform.definitions import build_definitions
from ingest_platform.defs.example_downstream import AUTOMATION_SENSOR, DAILY, ORDERS, daily_order_totals
from ingest_platform.dev.demo_data import produce, records
from ingest_platform.settings import Settings

pytestmark = pytest.mark.kafka


@pytest.fixture
def shop(tmp_path, kafka, kafka_broker, make_topic, clean_ingest_env):
    topic = make_topic(partitions=2)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "datasets:\n"
        f"  - {{name: orders, source: shop, topic: {topic}, format: json, event_time_field: created_at,"
        " partition_by: [date], schema: {total: double, currency: string}}\n"
    )
    settings = Settings(str(catalog), str(tmp_path / "lake"), kafka_broker.bootstrap)
    return build_definitions(settings), topic, settings


def expected_totals(produced: list[bytes]) -> dict[tuple[str, str], tuple[int, float]]:
    totals: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0.0])
    for value in produced:
        order = json.loads(value)
        day = datetime.strptime(order["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").date().isoformat()
        totals[(day, order["currency"])][0] += 1
        totals[(day, order["currency"])][1] += order["total"]
    return {k: (n, round(s, 2)) for k, (n, s) in totals.items()}


def test_orders_daily_reads_the_ingested_table_and_aggregates_the_right_rows(shop, kafka):
    defs, topic, settings = shop
    produced = list(records("orders", 400, seed=11))
    produce(kafka, topic, iter(produced))
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance)
        assert result.success
        (event,) = result.asset_materializations_for_node("analytics__shop__orders_daily")
    daily = DeltaTable(f"{settings.lake_root}/analytics/orders_daily").to_pyarrow_table().to_pylist()
    got = {(row["day"].isoformat(), row["currency"]): (row["orders"], row["revenue"]) for row in daily}
    want = expected_totals([value for _, value in produced])
    assert got.keys() == want.keys() and sum(n for n, _ in got.values()) == 400
    for key, (count, revenue) in want.items():
        assert got[key][0] == count and got[key][1] == pytest.approx(revenue, abs=0.011)
    assert event.metadata["orders_read"].value == 400 and event.metadata["dagster/row_count"].value == len(want)
    columns = {c.name: c.type for c in event.metadata["dagster/column_schema"].value.columns}
    assert columns == {"day": "date", "currency": "string", "orders": "long", "revenue": "double",
                       "first_order_at": "timestamp", "last_order_at": "timestamp"}  # fmt: skip


def test_automation_requests_it_after_the_table_updates_and_not_after_a_failed_blocking_check(shop, kafka):
    defs, topic, _ = shop
    assert AUTOMATION_SENSOR in {s.name for s in defs.sensors}
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert graph.get(DAILY).parent_keys == {ORDERS}  # the lineage edge

    job = defs.resolve_implicit_global_asset_job_def()
    produce(kafka, topic, records("orders", 50, seed=12))
    with dg.DagsterInstance.ephemeral() as instance:

        def materialize(key):  # as a run of the UI or a sensor: the asset with its checks
            assert job.execute_in_process(instance=instance, asset_selection=[key]).success

        def requested(cursor):
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                       asset_selection=dg.AssetSelection.assets(DAILY))  # fmt: skip
            return result.get_requested_partitions(DAILY) != set(), result.cursor

        due, cursor = requested(None)
        assert not due  # the table does not exist yet
        materialize(ORDERS)
        due, cursor = requested(cursor)
        assert due  # the table changed
        materialize(DAILY)
        due, cursor = requested(cursor)
        assert not due  # handled

        produce(kafka, topic, records("orders", 20, seed=13, start=50))
        materialize(ORDERS)
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=ORDERS, check_name="no_loss", passed=False, severity=dg.AssetCheckSeverity.ERROR,
        ))  # fmt: skip
        due, cursor = requested(cursor)
        assert not due  # the table changed, but its blocking check failed: lost rows stop at the table
        produce(kafka, topic, records("orders", 5, seed=14, start=70))
        materialize(ORDERS)  # the next run's checks pass
        due, cursor = requested(cursor)
        assert due


def test_daily_totals_of_an_empty_table_are_empty():
    import pyarrow as pa

    empty = pa.table({"_event_time": pa.array([], pa.timestamp("us", tz="UTC")), "currency": pa.array([], pa.string()),
                      "total": pa.array([], pa.float64())})  # fmt: skip
    assert daily_order_totals(empty).num_rows == 0
