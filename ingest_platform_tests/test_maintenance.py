"""Compaction and vacuum (docs/DESIGN.md §8): content and ledger unchanged, fewer files; one Dagster job takes
the dataset by config, never overlaps the dataset's ingest runs, runs daily per dataset; the sensor requests
maintenance once per failed file_size evaluation."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from ingest_platform.catalog import load_catalog
from ingest_platform.definitions import build_definitions
from ingest_platform.defs import maintenance as maintenance_defs
from ingest_platform.defs.maintenance import MAINTENANCE_JOB, SCHEDULE_NAME, SENSOR_NAME, maintenance_run_config
from ingest_platform.defs.sensors import DATASET_TAG, MAINTAINS_TAG, running_datasets
from ingest_platform.lake import health, maintenance
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.settings import Settings
from ingest_platform_tests.helpers import json_dataset
from ingest_platform_tests.lake_fixtures import commit, rows
from ingest_platform_tests.test_checks import run_checks_only

REPO = Path(__file__).resolve().parents[1]

SMALL = "{throughput_rps: 100, file_size_mb: {min: 1, max: 1024}}"
ORDER = ["_kafka_partition", "_kafka_offset"]


def fragmented(lake: LakeLocation, ds, commits: int = 20, per: int = 50) -> None:
    for i in range(commits):
        a = i * per
        commit(lake, ds, rows({0: range(a, a + per), 1: range(a, a + per)}), {0: (a, a + per - 1), 1: (a, a + per - 1)},
               started_at=time.time() - 0.5)  # fmt: skip


def snapshot(lake: LakeLocation, ds) -> pl.DataFrame:
    return pl.read_delta(lake.table_uri(ds.table_path)).sort(ORDER)


def test_compaction_reduces_files_and_changes_no_content_nor_ledger(tmp_path):
    lake = LakeLocation(str(tmp_path / "lake"))
    ds = json_dataset("t", slo=SMALL)
    fragmented(lake, ds)
    before = snapshot(lake, ds)
    table = lake.open_table(ds.table_path)
    ledger = {p: table.transaction_version(f"events-{p}") for p in (0, 1)}
    assert not health.evaluate(ds, table, lake.table_uri(ds.table_path), ["file_size"])["file_size"].passed

    report = maintenance.compact(lake, ds)

    assert report.files_before == 20 and report.files_after == 1 and report.files_removed == 20
    assert report.version_after == report.version_before + 1
    assert report.target_file_bytes == 256 * 1024 * 1024  # 256 MB clamped into [1, 1024]
    after = snapshot(lake, ds)
    assert after.equals(before)  # same rows, same values, same types
    table = lake.open_table(ds.table_path)
    assert {p: table.transaction_version(f"events-{p}") for p in (0, 1)} == ledger == {0: 999, 1: 999}
    findings = health.evaluate(ds, table, lake.table_uri(ds.table_path))
    assert all(f.passed for f in findings.values()), {k: f.summary for k, f in findings.items()}
    assert findings["no_loss"].metadata["table_rows"] == findings["no_loss"].metadata["rows_added_by_ingest_commits"]
    assert findings["latency_slo"].metadata["rows"] == 100  # the last run's rows, found after compaction
    assert maintenance.compact(lake, ds).files_removed == 0  # idempotent


def test_ingestion_continues_after_compaction(tmp_path):
    lake = LakeLocation(str(tmp_path / "lake"))
    ds = json_dataset("t", slo=SMALL)
    fragmented(lake, ds, commits=5)
    maintenance.compact(lake, ds)
    commit(lake, ds, rows({0: range(250, 300)}), {0: (250, 299)}, ledger={0: 299})
    table = lake.open_table(ds.table_path)
    assert health.evaluate(ds, table, lake.table_uri(ds.table_path), ["no_loss"])["no_loss"].passed
    assert snapshot(lake, ds).height == 550


def test_vacuum_deletes_compacted_files_after_the_catalog_retention(tmp_path):
    lake = LakeLocation(str(tmp_path / "lake"))
    kept = json_dataset("t", slo=SMALL)  # 168 h: the compacted-away files stay for a week
    fragmented(lake, kept, commits=4)
    maintenance.compact(lake, kept)
    assert maintenance.vacuum(lake, kept).files_deleted == 0
    now = json_dataset("t", slo=SMALL, vacuum_retention_hours=0)
    report = maintenance.vacuum(lake, now)
    assert report.files_deleted == 4 and report.retention_hours == 0
    parquet = list(Path(lake.table_uri(kept.table_path)).rglob("*.parquet"))
    assert len(parquet) == 1 and snapshot(lake, kept).height == 400


def test_no_table_is_nothing_to_maintain(tmp_path):
    lake = LakeLocation(str(tmp_path / "lake"))
    ds = json_dataset("t")
    assert maintenance.compact(lake, ds).files_before == 0
    assert maintenance.vacuum(lake, ds).files_deleted == 0


# --- Dagster: jobs in the pool, schedule, sensor --------------------------------------------------------------

CATALOG = f"""
datasets:
  - name: frag
    source: test
    topic: t.frag
    format: json
    slo: {SMALL}
"""


@pytest.fixture
def frag(tmp_path, clean_ingest_env):
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(CATALOG)
    settings = Settings(str(catalog_file), str(tmp_path / "lake"), "127.0.0.1:9")
    catalog = load_catalog(catalog_file)
    fragmented(LakeLocation(settings.lake_root), catalog.get("frag"), commits=6)
    defs = build_definitions(settings)  # includes check_definitions(catalog)
    return defs, catalog.get("frag"), LakeLocation(settings.lake_root)


def test_one_maintenance_job_compacts_the_dataset_named_by_its_config(frag):
    defs, ds, lake = frag
    job = defs.resolve_job_def(MAINTENANCE_JOB)
    assert [j.name for j in defs.jobs if j.name.startswith("maintain")] == []  # no job per dataset
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, run_config=maintenance_run_config(ds))
        assert result.success
        events = result.all_events
        observations = [e.event_specific_data.asset_observation for e in events if e.is_asset_observation]
        assert {o.asset_key for o in observations} == {dg.AssetKey(ds.asset_path)}
        assert [o.metadata["maintenance"].value for o in observations] == ["compact", "vacuum"]
        assert observations[0].metadata["files_before"].value == 6
        assert observations[0].metadata["files_after"].value == 1
        assert len(lake.open_table(ds.table_path).file_uris()) == 1

        unknown = job.execute_in_process(instance=instance, raise_on_error=False,
                                         run_config={"ops": {op: {"config": {"dataset": "nope"}}
                                                             for op in ("compact", "vacuum")}})  # fmt: skip
        assert not unknown.success
        failure = next(e for e in unknown.all_events if e.is_step_failure)
        assert "no dataset named 'nope'" in failure.step_failure_data.error.message


def test_daily_schedule_requests_one_tagged_run_per_dataset(frag, tmp_path):
    defs, ds, _ = frag
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == MAINTENANCE_JOB
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(timezone.utc))
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.run_config == maintenance_run_config(ds) and request.tags[MAINTAINS_TAG] == ds.name
    assert DATASET_TAG not in request.tags  # not an ingest run: the lag sensor does not wait for it
    assert request.run_key.startswith(f"{ds.name}:daily:")


def test_maintenance_yields_to_ingest_runs_and_never_holds_them_back(frag, tmp_path, monkeypatch):
    """Maintenance waits (bounded) for executing ingest runs of its dataset — tagged by the sensors or launched
    from the UI — but carries ``ingest/maintains``, not ``ingest/dataset``: the run queue's one-ingest-run limit
    and the lag sensor's in-progress rule ignore it (issue 12: a compaction must not hold back ingestion), and
    the repo's dagster.yaml admits one maintenance run per dataset at a time."""
    defs, ds, lake = frag
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())
    limits = settings["concurrency"]["runs"]["tag_concurrency_limits"]
    for tag in (DATASET_TAG, MAINTAINS_TAG):
        assert {"key": tag, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits

    monkeypatch.setattr(maintenance_defs, "WAIT_FOR_INGEST_S", 1)
    monkeypatch.setattr(maintenance_defs, "WAIT_POLL_S", 0.2)
    job = defs.resolve_job_def(MAINTENANCE_JOB)
    catalog = load_catalog(tmp_path / "catalog.yaml")  # the frag fixture's
    with dg.DagsterInstance.ephemeral() as instance:
        key = dg.AssetKey(ds.asset_path)  # an ingest run launched from the UI: no tag, its asset selected
        instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id="ui-run", status=dg.DagsterRunStatus.STARTED,
                                       asset_selection=frozenset({key})))  # fmt: skip
        instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id="lag-run", tags={DATASET_TAG: ds.name},
                                       status=dg.DagsterRunStatus.STARTED))  # fmt: skip  # the lag sensor's
        instance.add_run(dg.DagsterRun(job_name=MAINTENANCE_JOB, run_id="queued", tags={MAINTAINS_TAG: ds.name},
                                       status=dg.DagsterRunStatus.NOT_STARTED))  # fmt: skip  # not waited for
        blocked = job.execute_in_process(instance=instance, run_config=maintenance_run_config(ds), raise_on_error=False)
        assert not blocked.success
        failure = next(e for e in blocked.all_events if e.is_step_failure)
        assert "another run has been ingesting this dataset" in failure.step_failure_data.error.message
        assert len(lake.open_table(ds.table_path).file_uris()) == 6  # untouched

        instance.report_run_canceled(instance.get_run_by_id("ui-run"))
        assert not job.execute_in_process(instance=instance, run_config=maintenance_run_config(ds),
                                          raise_on_error=False).success  # the tagged ingest run still executes
        instance.report_run_canceled(instance.get_run_by_id("lag-run"))
        assert ds.name not in running_datasets(instance, catalog)  # a queued maintenance run is no ingest run
        assert job.execute_in_process(instance=instance, run_config=maintenance_run_config(ds)).success
        assert len(lake.open_table(ds.table_path).file_uris()) == 1

        instance.add_run(dg.DagsterRun(job_name=MAINTENANCE_JOB, run_id="compacting", tags={MAINTAINS_TAG: ds.name},
                                       status=dg.DagsterRunStatus.STARTED))  # fmt: skip
        assert ds.name not in running_datasets(instance, catalog)  # the lag sensor runs the dataset beside it


def test_sensor_requests_maintenance_once_per_failed_file_size_evaluation(frag):
    defs, ds, lake = frag
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with dg.DagsterInstance.ephemeral() as instance:

        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                              sensor_name=SENSOR_NAME)  # fmt: skip
            return sensor.evaluate_tick(context)

        assert not tick(None).run_requests  # no evaluation yet
        run_checks_only(defs, instance)
        first = tick(None)
        assert [r.job_name for r in first.run_requests] == [MAINTENANCE_JOB]
        assert first.run_requests[0].run_config == maintenance_run_config(ds)
        assert first.run_requests[0].run_key.startswith("lake/test/frag:file_size:")
        again = tick(first.cursor)
        assert not again.run_requests  # the same failed evaluation is handled once

        defs.resolve_job_def(MAINTENANCE_JOB).execute_in_process(instance=instance,
                                                                 run_config=maintenance_run_config(ds))
        run_checks_only(defs, instance)  # now passing
        assert not tick(again.cursor).run_requests
        assert json.loads(again.cursor) == json.loads(first.cursor)


@pytest.mark.kafka
def test_engine_written_table_passes_every_check_and_survives_compaction(tmp_path, kafka, make_topic):
    from ingest_platform.dev.demo_data import produce, records
    from ingest_platform.engines.embedded.engine import EmbeddedEngine

    topic = make_topic(partitions=3)
    ds = json_dataset(topic, slo="{throughput_rps: 100, latency_s: 60, file_size_mb: {min: 0.001, max: 64}}")
    lake = LakeLocation(str(tmp_path / "lake"))
    engine = EmbeddedEngine(kafka, lake)
    for start in (0, 3000):
        produce(kafka, topic, records("clicks", 3000, start=start))
        engine.run(ds)
    table = lake.open_table(ds.table_path)
    uri = lake.table_uri(ds.table_path)
    findings = health.evaluate(ds, table, uri)
    assert all(f.passed for f in findings.values()), {k: f.summary for k, f in findings.items()}
    assert findings["no_loss"].metadata["table_rows"] == 6000 and findings["no_loss"].metadata["partitions"] == 3
    run = health.read_history(table).commits[-1].run
    assert run["skipped"] == 0 and run["started_at"] <= time.time()

    before = snapshot(lake, ds)
    report = maintenance.compact(lake, ds)
    assert report.files_after < report.files_before
    assert snapshot(lake, ds).equals(before)
    produce(kafka, topic, records("clicks", 500, start=6000))
    assert engine.run(ds).records == 500  # the ledger reads the same after OPTIMIZE
    table = lake.open_table(ds.table_path)
    findings = health.evaluate(ds, table, uri)
    assert all(f.passed for f in findings.values()), {k: f.summary for k, f in findings.items()}
    assert findings["no_loss"].metadata["table_rows"] == 6500
