"""Compaction and vacuum jobs per dataset, their schedules, and the sensor that compacts a table whose
``file_size`` check failed (docs/DESIGN.md §8). For batch datasets the ops run in the dataset's pool (the
ingest asset's): a compaction and a batch run of one table never overlap — a batch run waits for the
compaction's op, briefly. A continuous dataset's stream takes no pool and its compaction neither: OPTIMIZE and
stream appends commit side by side (§8 "Concurrency"), and a MERGE that loses to a compaction is retried by the
stream (§10.1). Maintenance runs carry ``ingest/maintains``, not the ingest runs' ``ingest/dataset``, so the lag
sensor never waits for them.
"""

import json

import dagster as dg

from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.assets import pool_name
from ingest_platform.defs.resources import LakeResource
from ingest_platform.lake import maintenance
from ingest_platform.lake.health import FILE_SIZE, MB

#: Daily, at a quiet hour (UTC); the file_size sensor compacts in between when a table fragments.
MAINTENANCE_CRON = "0 3 * * *"
SENSOR_NAME = "compact_on_small_files"
#: Run tag of maintenance runs (the dataset's name); not the ingest runs' ``ingest/dataset``.
MAINTAINS_TAG = "ingest/maintains"


def maintenance_job_name(dataset: Dataset) -> str:
    return f"maintain__{dataset.source}__{dataset.name}"


def maintenance_pool(dataset: Dataset) -> str | None:
    """The ingest asset's pool for batch datasets; none for continuous ones (their stream holds no pool)."""
    return None if dataset.continuous else pool_name(dataset)


def build_maintenance_job(dataset: Dataset) -> dg.JobDefinition:
    """compact, then vacuum (in the dataset's pool when it is a batch dataset). Each logs an observation on the
    table's asset."""
    key = dg.AssetKey(dataset.asset_path)
    pool = maintenance_pool(dataset)
    prefix = f"{dataset.source}__{dataset.name}"

    @dg.op(name=f"compact__{prefix}", pool=pool, tags={"ingest/maintenance": "compact"})
    def _compact(context: dg.OpExecutionContext, lake: LakeResource) -> None:
        report = maintenance.compact(lake.location(), dataset)
        context.log.info(f"{dataset.name}: compaction {report.as_dict()}")
        context.log_event(dg.AssetObservation(asset_key=key, metadata={
            "maintenance": "compact",
            "files_before": report.files_before,
            "files_after": report.files_after,
            "files_removed": report.files_removed,
            "files_added": report.files_added,
            "target_file_mb": round(report.target_file_bytes / MB, 1),
            "duration_s": report.duration_s,
        }))  # fmt: skip

    @dg.op(name=f"vacuum__{prefix}", pool=pool, ins={"after": dg.In(dg.Nothing)},
           tags={"ingest/maintenance": "vacuum"})  # fmt: skip
    def _vacuum(context: dg.OpExecutionContext, lake: LakeResource) -> None:
        report = maintenance.vacuum(lake.location(), dataset)
        context.log.info(f"{dataset.name}: vacuum {report.as_dict()}")
        context.log_event(dg.AssetObservation(asset_key=key, metadata={
            "maintenance": "vacuum",
            "files_deleted": report.files_deleted,
            "retention_hours": report.retention_hours,
            "duration_s": report.duration_s,
        }))  # fmt: skip

    @dg.job(
        name=maintenance_job_name(dataset),
        description=f"Compact (OPTIMIZE) and vacuum the table of dataset '{dataset.name}'"
        + (f", in its pool {pool}." if pool else " beside its stream."),
        tags={MAINTAINS_TAG: dataset.name},
    )
    def _maintain() -> None:
        _vacuum(after=_compact())

    return _maintain


def build_file_size_sensor(datasets: list[Dataset], jobs: dict[str, dg.JobDefinition]) -> dg.SensorDefinition:
    """Requests the maintenance job of each dataset whose latest ``file_size`` evaluation failed, once per
    failed evaluation (run key = the evaluation's storage id; the cursor keeps the last one handled). It reads
    only the instance's check records: no table access in the sensor."""
    check_keys = {dg.AssetCheckKey(dg.AssetKey(d.asset_path), FILE_SIZE): d for d in datasets}

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=list(jobs.values()),
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
            requests.append(dg.RunRequest(
                job_name=maintenance_job_name(dataset),
                run_key=f"{name}:{FILE_SIZE}:{record.id}",
                tags={"ingest/trigger": f"{FILE_SIZE} failed", MAINTAINS_TAG: dataset.name},
            ))  # fmt: skip
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
    jobs = {d.name: build_maintenance_job(d) for d in catalog.datasets}
    schedules = [
        dg.ScheduleDefinition(
            name=f"{job.name}_daily", job=job, cron_schedule=MAINTENANCE_CRON,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        )
        for job in jobs.values()
    ]  # fmt: skip
    return dg.Definitions(
        jobs=list(jobs.values()), schedules=schedules, sensors=[build_file_size_sensor(list(catalog.datasets), jobs)]
    )
