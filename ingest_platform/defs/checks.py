"""Asset checks for every dataset, from one factory (docs/DESIGN.md §8). The checks only call the core
(``ingest_platform/lake/health.py``); this module decides severities, blocking, the checks job and schedule.

``check_definitions(catalog)`` returns the checks, the maintenance jobs and schedules and the sensor that
compacts a table whose ``file_size`` check failed; ``ingest_platform/definitions.py`` merges it.
"""

import dagster as dg

from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.resources import KafkaResource, LakeResource
from ingest_platform.lake import health
from ingest_platform.lake.health import (
    FILE_SIZE,
    FRESHNESS,
    KEY_UNIQUE,
    LATENCY_SLO,
    NO_LOSS,
    THROUGHPUT_SLO,
    Finding,
)
from ingest_platform.monitoring.offsets import records_waiting

#: ERROR where a bad table would mislead consumers (lost or duplicated data, a table staler than promised);
#: WARN where the table is correct but slow or fragmented (compaction and tuning fix those).
SEVERITY: dict[str, dg.AssetCheckSeverity] = {
    FILE_SIZE: dg.AssetCheckSeverity.WARN,
    THROUGHPUT_SLO: dg.AssetCheckSeverity.WARN,
    LATENCY_SLO: dg.AssetCheckSeverity.WARN,
    FRESHNESS: dg.AssetCheckSeverity.ERROR,
    NO_LOSS: dg.AssetCheckSeverity.ERROR,
    KEY_UNIQUE: dg.AssetCheckSeverity.ERROR,
}
#: Blocking checks stop downstream assets of the same run when they fail with ERROR.
BLOCKING = frozenset({NO_LOSS, KEY_UNIQUE})
DESCRIPTIONS = {
    FILE_SIZE: "Data files within the dataset's slo.file_size_mb [min, max] (small files that compaction could "
    "merge at most 10 % of the files).",
    THROUGHPUT_SLO: "Records/s of the last ingest run ≥ slo.throughput_rps.",
    LATENCY_SLO: "p95 event-time → commit latency of the last ingest run ≤ slo.latency_s.",
    FRESHNESS: "The last ingest commit is not older than slo.freshness_s; continuous datasets without it: 3 "
    "trigger intervals + 60 s, and an idle topic is not stale (no limit set for a batch dataset: reports the age).",
    NO_LOSS: "Offset ledger contiguous per partition (gaps only where retention loss is recorded) and consumed = "
    "rows + dead-lettered + skipped.",
    KEY_UNIQUE: "No key appears twice in the upsert table.",
}
CHECKS_JOB = "ingest_checks"
#: Every check of every dataset, hourly (a materialization also runs its asset's checks).
CHECKS_CRON = "15 * * * *"


def check_specs(dataset: Dataset) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            name=name, asset=dataset.asset_path, description=DESCRIPTIONS[name], blocking=name in BLOCKING,
        )
        for name in health.check_names(dataset)
    ]  # fmt: skip


def build_dataset_checks(dataset: Dataset) -> dg.AssetChecksDefinition:
    """One multi-check per dataset: the table and its log are read once for all selected checks."""
    key = dg.AssetKey(dataset.asset_path)

    @dg.multi_asset_check(
        specs=check_specs(dataset),
        name=f"checks__{dataset.source}__{dataset.name}",
        can_subset=True,
        description=f"Health of the Delta table of dataset '{dataset.name}'.",
    )
    def _checks(context: dg.AssetCheckExecutionContext, lake: LakeResource, kafka: KafkaResource):
        selected = [k.name for k in context.selected_asset_check_keys]
        location = lake.location()
        uri = location.table_uri(dataset.table_path)
        table = location.open_table(dataset.table_path)
        # A stream commits nothing while its topic is idle: freshness asks the topic only when it must.
        waiting = (lambda: records_waiting(kafka.connection(), dataset.topic, dataset.name, table)
                   ) if dataset.continuous else None  # fmt: skip
        findings = health.evaluate(dataset, table, uri, selected, storage_options=location.storage_options,
                                   waiting=waiting)  # fmt: skip
        for name, finding in findings.items():
            yield check_result(key, name, finding)

    return _checks


def check_result(key: dg.AssetKey, name: str, finding: Finding) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=name,
        passed=finding.passed,
        severity=SEVERITY[name],
        description=finding.summary,
        metadata={k: _metadata_value(v) for k, v in finding.metadata.items()},
    )


def _metadata_value(value: object) -> dg.MetadataValue:
    """Plain ints and floats stay numbers (the UI plots them over time)."""
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, (dict, list)):
        return dg.MetadataValue.json(value)
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.text(str(value))


def checks_job(selection: dg.AssetSelection | None = None, name: str = CHECKS_JOB, catalog: Catalog | None = None):
    """The checks of ``selection`` (default: all), without the reported ``stream`` checks of ``catalog``."""
    from ingest_platform.defs.streams import stream_check_keys

    selection = selection if selection is not None else dg.AssetSelection.all_asset_checks()
    reported = stream_check_keys(catalog) if catalog is not None else []
    return dg.define_asset_job(
        name,
        selection=selection - dg.AssetSelection.checks(*reported) if reported else selection,
        description="Evaluate the health checks of every dataset's table (no ingestion).",
    )


def check_definitions(catalog: Catalog) -> dg.Definitions:
    """Checks, the checks job and its schedule, and maintenance (jobs, schedules, the file_size sensor)."""
    from ingest_platform.defs.maintenance import maintenance_definitions

    job = checks_job(catalog=catalog)
    checks = dg.Definitions(
        asset_checks=[build_dataset_checks(dataset) for dataset in catalog.datasets],
        jobs=[job],
        schedules=[
            dg.ScheduleDefinition(
                name=f"{CHECKS_JOB}_hourly", job=job, cron_schedule=CHECKS_CRON,
                default_status=dg.DefaultScheduleStatus.RUNNING,
            )
        ],
    )  # fmt: skip
    return dg.Definitions.merge(checks, maintenance_definitions(catalog))
