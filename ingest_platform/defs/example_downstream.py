"""The pattern to copy: an asset of your own downstream of an ingested table (docs/DESIGN.md §13).

``analytics/shop/orders_daily`` aggregates the demo's ``lake/shop/orders`` per day and currency: orders and
revenue. What makes it the pattern:

* ``deps=[the table's asset key]``: the lineage edge; the asset reads the table itself (the Delta table at
  ``<lake root>/shop/orders`` through the ``lake`` resource), not a Dagster output, so any engine, run or stream
  that commits to the table counts as an update.
* ``automation_condition=eager() & all_deps_blocking_checks_passed()``: Dagster's declarative automation
  materializes it after each materialization of the table, never while the table is being written, and not
  when the table's blocking checks (``no_loss``; ``key_unique``) failed: lost or duplicated rows stop at the
  table. The sensor ``downstream_automation`` evaluates it (running by default under ``dagster dev``).
* It writes its result as a Delta table (``<lake root>/analytics/orders_daily``, overwritten: a full
  recomputation, fine for a small aggregate; a large one would read only the days changed since the
  version it last saw) and publishes ``dagster/row_count``, ``dagster/column_schema``, ``dagster/uri`` and
  the table version it read.

Added to the code location when the catalog has ``lake/shop/orders`` (the demo catalog does).
"""

import dagster as dg

from ingest_platform.catalog import Catalog
from ingest_platform.defs.resources import LakeResource

ORDERS = dg.AssetKey(["lake", "shop", "orders"])
ORDERS_TABLE = "shop/orders"
DAILY = dg.AssetKey(["analytics", "shop", "orders_daily"])
DAILY_TABLE = "analytics/orders_daily"
AUTOMATION_SENSOR = "downstream_automation"
#: The columns of the orders table the aggregate reads.
COLUMNS = ("_event_time", "currency", "total")
DESCRIPTIONS = {
    "day": "UTC day of the orders' event time.",
    "currency": "Currency of the orders.",
    "orders": "Number of orders.",
    "revenue": "Sum of the orders' totals, in the currency.",
    "first_order_at": "Event time of the day's first order in the currency.",
    "last_order_at": "Event time of the day's last order in the currency.",
}


def daily_order_totals(orders):
    """Per UTC day and currency: ``orders`` (count), ``revenue`` (sum of ``total``), ``first_order_at`` and
    ``last_order_at`` (by ``_event_time``), sorted by day and currency. ``orders`` is an Arrow table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    day = pc.cast(orders["_event_time"], pa.date32())
    grouped = (
        pa.table({"day": day, "currency": orders["currency"], "total": orders["total"],
                  "event_time": orders["_event_time"]})
        .group_by(["day", "currency"])
        .aggregate([("total", "count"), ("total", "sum"), ("event_time", "min"), ("event_time", "max")])
    )  # fmt: skip
    result = pa.table({
        "day": grouped["day"], "currency": grouped["currency"], "orders": grouped["total_count"],
        "revenue": pc.round(grouped["total_sum"], 2), "first_order_at": grouped["event_time_min"],
        "last_order_at": grouped["event_time_max"],
    })  # fmt: skip
    return result.sort_by([("day", "ascending"), ("currency", "ascending")])


@dg.asset(
    key=DAILY,
    deps=[ORDERS],
    group_name="analytics",
    kinds={"delta", "python"},
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="Orders and revenue per day and currency, from the ingested table lake/shop/orders; "
    "re-computed by declarative automation after each update of that table (the pattern to copy: "
    "ingest_platform/defs/example_downstream.py).",
)
def orders_daily(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    from deltalake import write_deltalake

    from ingest_platform.defs.assets import column_schema
    from ingest_platform.engines.columns import table_columns

    location = lake.location()
    table = location.open_table(ORDERS_TABLE)
    if table is None:
        raise dg.Failure(f"no table at {location.table_uri(ORDERS_TABLE)} yet: materialize lake/shop/orders first")
    names = {field.name for field in table.schema().fields}
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise dg.Failure(f"{location.table_uri(ORDERS_TABLE)} has no column {missing}: this example reads the "
                         f"demo's orders ({', '.join(COLUMNS)})")  # fmt: skip
    version = table.version()
    orders = table.to_pyarrow_dataset().to_table(columns=list(COLUMNS))
    daily = daily_order_totals(orders)
    uri = location.table_uri(DAILY_TABLE)
    write_deltalake(uri, daily, mode="overwrite", schema_mode="overwrite",
                    storage_options=dict(location.storage_options) or None)  # fmt: skip
    context.log.info(f"{daily.num_rows} day/currency rows from {orders.num_rows} orders (table version {version})")
    written = location.open_table(DAILY_TABLE)
    columns = table_columns(written.schema().to_json(), [], DESCRIPTIONS) if written is not None else []
    return dg.MaterializeResult(metadata={
        "dagster/row_count": daily.num_rows,
        "dagster/uri": dg.MetadataValue.path(uri),
        "dagster/column_schema": column_schema(columns),
        "orders_read": orders.num_rows,
        "source_table_version": version,
    })  # fmt: skip


def example_downstream_definitions(catalog: Catalog) -> dg.Definitions:
    """The example asset and the automation sensor that keeps it fresh, when the catalog has the demo's orders."""
    if not any(dataset.asset_path == ORDERS.path for dataset in catalog.datasets):
        return dg.Definitions()
    sensor = dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(DAILY),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Declarative automation of the assets downstream of the ingested tables "
        "(ingest_platform/defs/example_downstream.py).",
    )
    return dg.Definitions(assets=[orders_daily], sensors=[sensor])
