"""One Dagster asset per catalog dataset, all from one factory. The asset body only calls the core.

What the UI shows (docs/DESIGN.md §13): the catalog's description, owners and settings; the table's columns
(``dagster/column_schema``) from the catalog at definition time and from the Delta schema after each run; the
table name; per run the records, rows, files and rates as plottable numbers.
"""

import functools

import dagster as dg

from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.resources import KafkaResource, LakeResource, SparkResource
from ingest_platform.engines.columns import Column, catalog_columns, table_columns
from ingest_platform.engines.report import RunReport
from ingest_platform.engines.runner import run_dataset
from ingest_platform.lake.storage import is_s3

RESOURCE_KEYS = frozenset({"kafka", "lake", "spark"})


def pool_name(dataset: Dataset) -> str:
    """Each dataset has its own pool (limit 1 in dagster.yaml), so two runs never write one table."""
    return f"ingest.{dataset.source}.{dataset.name}"


def build_ingest_asset(dataset: Dataset) -> dg.AssetsDefinition:
    description = dataset.description or f"Kafka topic `{dataset.topic}` ingested into a Delta table."
    metadata = {  # format and mode are tags; the table's location is dagster/uri once it exists
        "topic": dataset.topic,
        "engine": dataset.engine,
        "partition_by": ", ".join(dataset.partition_by) or "(none)",
        "consumer_group": dataset.group_id,
        "dagster/table_name": table_name(dataset),
        "dagster/column_schema": column_schema(catalog_columns(dataset)),
    }

    @dg.asset(
        key=dataset.asset_path,
        group_name=dataset.source,
        kinds={"kafka", "delta"},
        description=description,
        metadata=metadata,
        owners=list(dataset.owners) or None,
        pool=pool_name(dataset),
        tags={"ingest/format": dataset.format, "ingest/mode": dataset.mode},
        # Resources by key rather than as typed parameters: Dagster inspects a decorated function's signature
        # several times per asset, which was a tenth of loading 1,000 datasets (benchmarks/definitions_bench.py).
        required_resource_keys=RESOURCE_KEYS,
    )
    def _ingest(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        kafka: KafkaResource = context.resources.kafka
        lake: LakeResource = context.resources.lake
        spark: SparkResource = context.resources.spark
        location = lake.location()
        report = run_dataset(
            dataset, kafka.connection(), location, log=context.log, run_id=context.run.run_id,
            spark_session=lambda profile: spark.session(profile, s3=is_s3(location.root)), spark_profile=spark.profile,
        )  # fmt: skip
        table = location.open_table(dataset.table_path)
        schema = (table.schema().to_json(), table.metadata().partition_columns) if table is not None else None
        metadata = {**table_metadata(dataset, report.table_uri, table.count() if table else 0, schema),
                    **materialization_metadata(report)}  # fmt: skip
        return dg.MaterializeResult(metadata=metadata)

    return _ingest


def table_name(dataset: Dataset) -> str:
    """The table's name as the UI shows it: ``lake.<source>.<name>``, like its asset key."""
    return ".".join(dataset.asset_path)


def table_metadata(dataset: Dataset, uri: str, row_count: int | None,
                   schema: tuple[str, list[str]] | None) -> dict[str, dg.MetadataValue]:  # fmt: skip
    """The standard ``dagster/*`` metadata of a materialization of ``dataset``'s table (batch run or stream
    summary): its location and name, the row count and the column schema (from ``schema``: the Delta schema
    JSON and partition columns) when known."""
    metadata: dict[str, dg.MetadataValue] = {
        "dagster/uri": dg.MetadataValue.path(uri),
        "dagster/table_name": dg.MetadataValue.text(table_name(dataset)),
    }
    if row_count is not None:
        metadata["dagster/row_count"] = dg.MetadataValue.int(row_count)
    if schema is not None:
        columns = table_columns(schema[0], schema[1], dataset.column_descriptions)
        metadata["dagster/column_schema"] = dg.MetadataValue.table_schema(column_schema(columns))
    return metadata


def column_schema(columns: list[Column]) -> dg.TableSchema:
    """Partition columns carry the tag ``partition``; nullability is shown once the Delta schema knows it."""
    return dg.TableSchema(columns=[_table_column(c) for c in columns])


@functools.lru_cache(maxsize=4096)
def _table_column(column: Column) -> dg.TableColumn:
    """Cached: the engines' columns are the same for every dataset (1,000 datasets load faster)."""
    return dg.TableColumn(column.name, column.type, column.description,
                          constraints=None if column.nullable else _NOT_NULL,
                          tags=_PARTITION if column.partition else None)  # fmt: skip


_NOT_NULL = dg.TableColumnConstraints(nullable=False)
_PARTITION = {"partition": ""}


def materialization_metadata(report: RunReport) -> dict[str, object]:
    """Plain numbers where the UI should plot them over time."""
    upsert_metadata = {
        name: dg.MetadataValue.int(getattr(report, name))
        for name in ("rows_inserted", "rows_updated", "rows_deleted")
        if getattr(report, name)
    }
    if report.dlq_commits:
        upsert_metadata["dlq_commits"] = dg.MetadataValue.json(report.dlq_commits)
    return {
        "records": dg.MetadataValue.int(report.records),
        "rows_written": dg.MetadataValue.int(report.rows_written),
        "skipped": dg.MetadataValue.int(report.skipped),
        "applied": dg.MetadataValue.int(report.applied),
        "dead_lettered": dg.MetadataValue.int(report.dead_lettered),
        "records_reconcile": dg.MetadataValue.bool(
            report.records == report.applied + report.dead_lettered + report.skipped
        ),
        "bytes": dg.MetadataValue.int(report.bytes_read),
        "files_written": dg.MetadataValue.int(report.files_written),
        "bytes_written": dg.MetadataValue.int(report.bytes_written),
        "average_file_mb": dg.MetadataValue.float(round(report.average_file_mb, 3)),
        "duration_s": dg.MetadataValue.float(round(report.duration_s, 3)),
        "records_per_s": dg.MetadataValue.float(round(report.records_per_s, 1)),
        "max_event_to_commit_lag_s": dg.MetadataValue.float(round(report.max_event_to_commit_lag_s or 0.0, 3)),
        "lag_after_run": dg.MetadataValue.int(report.lag_after),
        "delta_commits": dg.MetadataValue.json(report.commits),
        "offsets": dg.MetadataValue.json(
            {
                str(p.partition): {"first": p.first_offset, "last": p.last_offset, "records": p.records}
                for p in report.partitions
            }
        ),
        "engine": dg.MetadataValue.text(report.engine),
        **upsert_metadata,
    }


def ingestion_definitions(catalog: Catalog) -> dg.Definitions:
    return dg.Definitions(assets=[build_ingest_asset(dataset) for dataset in catalog.datasets])
