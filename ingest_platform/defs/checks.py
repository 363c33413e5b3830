"""Asset checks for every dataset, from one factory (docs/DESIGN.md §8). The checks only call the core
(``ingest_platform/lake/health.py``); this module decides severities, blocking, the checks job and schedule.

``check_definitions(catalog)`` returns the checks, the checks job and its schedule;
``ingest_platform/definitions.py`` merges it (maintenance: ``defs/maintenance.py``).
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import dagster as dg

from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.resources import KafkaResource, LakeResource
from ingest_platform.defs.sensors import LAKE_TABLES
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
CHECKS_SENSOR = "ingest_checks_hourly"
#: Datasets per check op (ops are named ``checks__<source>[__<n>]``), and tables one op reads at a time.
DATASETS_PER_CHECK_OP = 50
CHECK_THREADS = 4
#: Every check of every dataset, hourly (a materialization also runs its asset's checks).
CHECKS_MINUTE = 15
CHECKS_CRON = f"{CHECKS_MINUTE} * * * *"


def check_specs(dataset: Dataset) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            name=name, asset=dataset.asset_path, description=DESCRIPTIONS[name], blocking=name in BLOCKING,
        )
        for name in health.check_names(dataset)
    ]  # fmt: skip


def build_table_checks(datasets: list[Dataset], name: str) -> dg.AssetChecksDefinition:
    """One multi-asset check over ``datasets`` (``can_subset``): a run evaluates the checks it selects, each
    dataset's table and log read once for all of its selected checks, a few datasets at a time.

    A few datasets per op instead of one op each keeps the code location light (benchmarks/definitions_bench.py)
    and the hourly checks job at a few steps instead of one process per dataset; not all of them in one op,
    because Dagster's asset-job builder compares every input of an op with all of its check keys (quadratic).
    A dataset whose checks crash gets no result (its checks show as failed executions) and fails the step
    after the other datasets' results are recorded. A blocking check that fails stops, in the same run, the
    downstream assets of every dataset the op checked in that run (runs started by the sensors hold one dataset).
    """
    by_key = {dg.AssetKey(d.asset_path): d for d in datasets}

    @dg.multi_asset_check(
        specs=[spec for dataset in datasets for spec in check_specs(dataset)],
        name=name,
        can_subset=True,
        description=f"Health of the Delta tables of {', '.join(d.name for d in datasets[:3])}"
        + (f" and {len(datasets) - 3} more datasets" if len(datasets) > 3 else "") + " (docs/DESIGN.md §8).",
    )
    def ingest_table_checks(context: dg.AssetCheckExecutionContext, lake: LakeResource, kafka: KafkaResource):
        selected: dict[dg.AssetKey, list[str]] = {}
        for check_key in sorted(context.selected_asset_check_keys, key=lambda k: (k.asset_key.path, k.name)):
            selected.setdefault(check_key.asset_key, []).append(check_key.name)
        location = lake.location()

        def evaluate(dataset: Dataset, names: list[str]) -> dict[str, Finding]:
            uri = location.table_uri(dataset.table_path)
            table = location.open_table(dataset.table_path)
            # A stream commits nothing while its topic is idle: freshness asks the topic only when it must.
            waiting = (lambda: records_waiting(kafka.connection(), dataset.topic, dataset.name, table)
                       ) if dataset.continuous else None  # fmt: skip
            return health.evaluate(dataset, table, uri, names, storage_options=location.storage_options,
                                   waiting=waiting)  # fmt: skip

        crashed = []
        with ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="checks") as pool:
            futures = [(key, pool.submit(evaluate, by_key[key], names)) for key, names in selected.items()]
            for key, future in futures:
                try:
                    findings = future.result()
                except Exception as error:  # one broken table must not hide the others' results
                    crashed.append(f"{by_key[key].name}: {type(error).__name__}: {error}")
                    context.log.error(f"checks of {key.to_user_string()} could not run: {crashed[-1]}")
                    continue
                for name, finding in findings.items():
                    yield check_result(key, name, finding)
        if crashed:
            raise dg.Failure(f"the checks of {len(crashed)} dataset(s) could not run: " + "; ".join(crashed))

    return ingest_table_checks


def check_groups(catalog: Catalog) -> dict[str, list[Dataset]]:
    """The datasets of each check op: per source, in catalog order, at most DATASETS_PER_CHECK_OP each."""
    by_source: dict[str, list[Dataset]] = {}
    for dataset in catalog.datasets:
        by_source.setdefault(dataset.source, []).append(dataset)
    groups = {}
    for source, datasets in by_source.items():
        for start in range(0, len(datasets), DATASETS_PER_CHECK_OP):
            suffix = f"__{start // DATASETS_PER_CHECK_OP + 1}" if len(datasets) > DATASETS_PER_CHECK_OP else ""
            groups[f"checks__{source}{suffix}"] = datasets[start : start + DATASETS_PER_CHECK_OP]
    return groups


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


def checks_job(selection: dg.AssetSelection | None = None, name: str = CHECKS_JOB):
    """A job of checks only (``ingest-platform checks`` builds one for the datasets it is asked about)."""
    return dg.define_asset_job(
        name,
        selection=selection if selection is not None else dg.AssetSelection.all_asset_checks(),
        description="Evaluate the health checks of every dataset's table (no ingestion).",
    )


def build_hourly_checks_sensor(catalog: Catalog) -> dg.SensorDefinition:
    """Every check of every dataset at CHECKS_CRON (UTC), as one checks-only run of the base asset job (no
    asset is materialized). A sensor with an ``asset_selection`` rather than a schedule: a schedule needs a
    job of its own, and a checks-only asset job of N datasets costs a third of the code location's
    resolution (benchmarks/definitions_bench.py). Like a schedule it does not catch up: the first tick only
    records the latest cron time, each later one requests a run when a new cron time has passed (run key =
    that time)."""
    keys = [key for dataset in catalog.datasets for key in check_keys(dataset)]

    @dg.sensor(
        name=CHECKS_SENSOR,
        asset_selection=LAKE_TABLES,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Evaluates every dataset's checks at '{CHECKS_CRON}' (UTC), without ingesting.",
    )
    def ingest_checks_hourly(context: dg.SensorEvaluationContext):
        due = latest_hourly_time(datetime.now(timezone.utc)).isoformat()
        if context.cursor is None or context.cursor >= due:
            return dg.SensorResult(skip_reason=f"next checks run after {CHECKS_CRON} (UTC) passes", cursor=due)
        request = dg.RunRequest(run_key=f"checks:{due}", asset_selection=[], asset_check_keys=keys,
                                tags={"ingest/trigger": "hourly checks"})  # fmt: skip
        return dg.SensorResult(run_requests=[request], cursor=due)

    return ingest_checks_hourly


def check_keys(dataset: Dataset) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(dg.AssetKey(dataset.asset_path), name) for name in health.check_names(dataset)]


def latest_hourly_time(now: datetime) -> datetime:
    """The last time at or before ``now`` (UTC) that CHECKS_CRON names: minute CHECKS_MINUTE of an hour."""
    latest = now.replace(minute=CHECKS_MINUTE, second=0, microsecond=0)
    return latest if latest <= now else latest - timedelta(hours=1)


def check_definitions(catalog: Catalog) -> dg.Definitions:
    """The checks and the sensor that evaluates all of them hourly."""
    return dg.Definitions(
        asset_checks=[build_table_checks(group, name) for name, group in check_groups(catalog).items()],
        sensors=[build_hourly_checks_sensor(catalog)],
    )
