"""Compaction and vacuum: one job for every dataset, its daily schedule, and the sensor that compacts a table
whose ``file_size`` check failed (docs/DESIGN.md §8).

One job, ``ingest_maintenance``, takes the dataset by config (``{dataset: <name>}``) and carries it as the run
tag ``ingest/maintains``: one job instead of one per dataset keeps a code location of 1,000 datasets fast to load
(benchmarks/definitions_bench.py) and the UI's job list short.

Maintenance never holds back ingestion (issue 12): its runs do not carry the ingest runs' ``ingest/dataset``
tag, so the lag sensor's in-progress rule and the run queue's one-run-per-dataset limit ignore them, and its ops
take no pool, so neither a batch run nor a stream waits for a compaction. Maintenance yields instead: the run
queue admits one maintenance run per ``ingest/maintains`` value at a time (``dagster.yaml``), and the op waits
(bounded) for executing ingest runs of its dataset — tagged by the sensors or launched from the UI — before
touching the table. An ingest run or a stream that starts during a compaction commits beside it: an append and
OPTIMIZE never conflict; a MERGE that loses to it fails its conflict check before its commit, so the ledger has
not moved and the next attempt (the stream's retry, the lag sensor's next run) reads the same records again
(§8 "Concurrency"). Stream runs select no asset, so maintenance does not wait for a group's long-lived run.
"""

import json
import time

import dagster as dg

from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.resources import LakeResource
from ingest_platform.defs.sensors import EXECUTING, MAINTAINS_TAG, TRIGGER_TAG, running_datasets
from ingest_platform.lake import maintenance
from ingest_platform.lake.health import FILE_SIZE, MB

MAINTENANCE_JOB = "ingest_maintenance"
#: Daily, at a quiet hour (UTC); the file_size sensor compacts in between when a table fragments.
MAINTENANCE_CRON = "0 3 * * *"
SCHEDULE_NAME = f"{MAINTENANCE_JOB}_daily"
SENSOR_NAME = "compact_on_small_files"
#: How long the op waits for an in-progress ingest run of its dataset, and how often it looks.
WAIT_FOR_INGEST_S = 900
WAIT_POLL_S = 5


class MaintenanceConfig(dg.Config):
    dataset: str


def maintenance_run_config(dataset: Dataset) -> dict:
    return {"ops": {op: {"config": {"dataset": dataset.name}} for op in ("compact", "vacuum")}}


def maintenance_run_request(dataset: Dataset, run_key: str, trigger: str) -> dg.RunRequest:
    return dg.RunRequest(
        job_name=MAINTENANCE_JOB, run_key=run_key, run_config=maintenance_run_config(dataset),
        tags={MAINTAINS_TAG: dataset.name, TRIGGER_TAG: trigger},
    )  # fmt: skip


def build_maintenance_job(catalog: Catalog) -> dg.JobDefinition:
    """compact, then vacuum, of the dataset named in the run config. Each logs an observation on the table's
    asset."""

    def dataset_of(context: dg.OpExecutionContext, config: MaintenanceConfig) -> Dataset:
        try:
            dataset = catalog.get(config.dataset)
        except KeyError as error:
            raise dg.Failure(error.args[0]) from None
        _wait_for_ingest_runs(context, catalog, dataset)
        return dataset

    @dg.op(name="compact", tags={"ingest/maintenance": "compact"})
    def compact(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource) -> None:
        dataset = dataset_of(context, config)
        report = maintenance.compact(lake.location(), dataset)
        context.log.info(f"{dataset.name}: compaction {report.as_dict()}")
        context.log_event(dg.AssetObservation(asset_key=dataset.asset_path, metadata={
            "maintenance": "compact",
            "files_before": report.files_before,
            "files_after": report.files_after,
            "files_removed": report.files_removed,
            "files_added": report.files_added,
            "target_file_mb": round(report.target_file_bytes / MB, 1),
            "duration_s": report.duration_s,
        }))  # fmt: skip

    @dg.op(name="vacuum", ins={"after": dg.In(dg.Nothing)}, tags={"ingest/maintenance": "vacuum"})
    def vacuum(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource) -> None:
        dataset = dataset_of(context, config)
        report = maintenance.vacuum(lake.location(), dataset)
        context.log.info(f"{dataset.name}: vacuum {report.as_dict()}")
        context.log_event(dg.AssetObservation(asset_key=dataset.asset_path, metadata={
            "maintenance": "vacuum",
            "files_deleted": report.files_deleted,
            "retention_hours": report.retention_hours,
            "duration_s": report.duration_s,
        }))  # fmt: skip

    @dg.job(
        name=MAINTENANCE_JOB,
        description="Compact (OPTIMIZE) and vacuum the table of one dataset, named by the run config "
        "(`ops: {compact: {config: {dataset: <name>}}, vacuum: ...}`); one run per dataset at a time.",
    )
    def ingest_maintenance() -> None:
        vacuum(after=compact())

    return ingest_maintenance


def _wait_for_ingest_runs(context: dg.OpExecutionContext, catalog: Catalog, dataset: Dataset) -> None:
    """Waits (bounded) while another run that touches ``dataset`` executes. Queued runs are not waited for:
    the run queue holds the tagged ones back while this run executes (waiting for them would deadlock), and
    an untagged one that starts now races as Delta allows (§8 "Concurrency")."""
    deadline = time.monotonic() + WAIT_FOR_INGEST_S
    while dataset.name in running_datasets(context.instance, catalog, context.run_id, EXECUTING):
        if time.monotonic() > deadline:
            raise dg.Failure(
                f"{dataset.name}: another run has been ingesting this dataset for more than {WAIT_FOR_INGEST_S} s; "
                "maintenance did not touch the table (the next schedule or file_size failure retries it)"
            )
        context.log.info(f"{dataset.name}: waiting for the run in progress that ingests it")
        time.sleep(WAIT_POLL_S)


def build_daily_schedule(catalog: Catalog, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """One run per dataset every day at MAINTENANCE_CRON (run key: dataset and day)."""

    @dg.schedule(
        name=SCHEDULE_NAME, job=job, cron_schedule=MAINTENANCE_CRON, execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Compacts and vacuums every dataset's table once a day.",
    )  # fmt: skip
    def _daily(context: dg.ScheduleEvaluationContext):
        day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        return [maintenance_run_request(d, f"{d.name}:daily:{day}", "daily") for d in catalog.datasets]

    return _daily


def build_file_size_sensor(datasets: list[Dataset], job: dg.JobDefinition) -> dg.SensorDefinition:
    """Requests maintenance of each dataset whose latest ``file_size`` evaluation failed, once per failed
    evaluation (run key = the evaluation's storage id; the cursor keeps the last one handled). It reads only
    the instance's check records: no table access in the sensor."""
    check_keys = {dg.AssetCheckKey(dg.AssetKey(d.asset_path), FILE_SIZE): d for d in datasets}

    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Compacts a dataset's table when its file_size check fails.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        handled: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(list(check_keys))
        requests = []
        for check_key, record in latest.items():
            name = check_key.asset_key.to_user_string()
            if record.id <= handled.get(name, -1) or not _failed(record):
                continue
            dataset = check_keys[check_key]
            handled[name] = record.id
            requests.append(maintenance_run_request(dataset, f"{name}:{FILE_SIZE}:{record.id}", f"{FILE_SIZE} failed"))
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new file_size failure"), cursor=json.dumps(handled))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(handled, sort_keys=True))

    return _sensor


def _failed(record) -> bool:
    """The record holds an evaluation that did not pass (not a planned or crashed execution)."""
    event = record.event.dagster_event if record.event is not None else None
    evaluation = event.event_specific_data if event is not None else None
    return isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.passed


def maintenance_definitions(catalog: Catalog) -> dg.Definitions:
    job = build_maintenance_job(catalog)
    return dg.Definitions(
        jobs=[job],
        schedules=[build_daily_schedule(catalog, job)],
        sensors=[build_file_size_sensor(list(catalog.datasets), job)],
    )
