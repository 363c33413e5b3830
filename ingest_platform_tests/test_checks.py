"""Asset checks (docs/DESIGN.md §8): each passes on a healthy table and fails on a crafted bad one; the checks
run through Dagster (a job of check selections) and through `ingest-platform checks`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ingest_platform.catalog import Catalog
from ingest_platform.cli.main import main
from ingest_platform.definitions import build_definitions
from ingest_platform.defs.checks import BLOCKING, CHECKS_SENSOR, SEVERITY, latest_hourly_time
from ingest_platform.lake import health
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.settings import Settings
from ingest_platform_tests.helpers import dataset_from_yaml, json_dataset
from ingest_platform_tests.lake_fixtures import commit, rows

SLO = "{throughput_rps: 100, latency_s: 30, file_size_mb: {min: 0.001, max: 10}}"


def dataset(name: str = "events", slo: str = SLO, **extra):
    return json_dataset("t", name=name, slo=slo, **extra)


def healthy(lake: LakeLocation, ds, commits: int = 3, per: int = 300) -> None:
    """``commits`` runs over two partitions, contiguous, fresh event times, each run about 1 s long."""
    for i in range(commits):
        a, b = i * per, i * per // 2
        data = rows({0: range(a, a + per), 1: range(b, b + per // 2)})
        commit(lake, ds, data, {0: (a, a + per - 1), 1: (b, b + per // 2 - 1)}, started_at=time.time() - 1)


def evaluate(lake: LakeLocation, ds, name: str) -> health.Finding:
    table = lake.open_table(ds.table_path)
    return health.evaluate(ds, table, lake.table_uri(ds.table_path), [name])[name]


def test_every_check_passes_on_a_healthy_table(lake):
    ds = dataset()
    healthy(lake, ds)
    findings = health.evaluate(ds, lake.open_table(ds.table_path), lake.table_uri(ds.table_path))
    assert set(findings) == {"file_size", "throughput_slo", "latency_slo", "freshness", "no_loss"}
    assert all(f.passed for f in findings.values()), {k: f.summary for k, f in findings.items()}
    assert findings["no_loss"].metadata["ledger"] == {"0": 899, "1": 449}
    assert findings["no_loss"].metadata["table_rows"] == 1350
    assert findings["file_size"].metadata["files"] == 3
    assert findings["latency_slo"].metadata["rows"] == 450  # the last run's rows only
    assert 0.5 < findings["latency_slo"].metadata["p95_s"] < 30


# --- file_size ----------------------------------------------------------------------------------------------


def test_file_size_fails_on_many_small_files(lake):
    ds = dataset(slo="{file_size_mb: {min: 1, max: 1024}}")
    healthy(lake, ds, commits=12, per=20)
    finding = evaluate(lake, ds, "file_size")
    assert not finding.passed
    m = finding.metadata
    assert m["files"] == 12 and m["small_files"] == 12 and m["compactable_small_files"] == 12
    assert m["small_file_ratio"] == 1.0 and m["p10_mb"] <= m["median_mb"] <= m["p90_mb"] < 1
    assert "12 below 1 MB" in finding.summary


def test_file_size_fails_on_files_above_the_maximum(lake):
    ds = dataset(slo="{file_size_mb: {min: 0.0001, max: 0.001}}")
    healthy(lake, ds, commits=1, per=3000)
    finding = evaluate(lake, ds, "file_size")
    assert not finding.passed and finding.metadata["large_files"] == 1


def test_a_lone_small_file_per_partition_is_not_held_against_the_table(lake):
    """Compaction cannot merge a partition's only file: reported (small_files) but passing."""
    ds = dataset(slo="{file_size_mb: {min: 1, max: 1024}}")
    for day in (1, 2, 3):
        commit(lake, ds, rows({0: range(day * 10, day * 10 + 10)}, day=day), {0: (day * 10, day * 10 + 9)},
               ledger={0: day * 10 + 9})  # fmt: skip
    finding = evaluate(lake, ds, "file_size")
    assert finding.passed and finding.metadata["small_files"] == 3
    assert finding.metadata["compactable_small_files"] == 0 and finding.metadata["table_partitions"] == 3


# --- throughput_slo and latency_slo -------------------------------------------------------------------------


def test_throughput_fails_on_a_slow_run(lake):
    ds = dataset()
    healthy(lake, ds, commits=1)
    assert evaluate(lake, ds, "throughput_slo").passed
    # 600 records in a run that started 60 s before its commit: 10 records/s < 100.
    commit(lake, ds, rows({0: range(300, 900)}), {0: (300, 899)}, ledger={0: 899}, started_at=time.time() - 60)
    finding = evaluate(lake, ds, "throughput_slo")
    assert not finding.passed
    assert finding.metadata["records"] == 600 and 9 < finding.metadata["records_per_s"] < 11


def test_throughput_judges_all_commits_of_the_last_run(lake):
    ds = dataset()
    started = time.time() - 2
    commit(lake, ds, rows({0: range(0, 300)}), {0: (0, 299)}, run_id="r1", started_at=started)
    commit(lake, ds, rows({0: range(300, 600)}), {0: (300, 599)}, run_id="r1", started_at=started)
    finding = evaluate(lake, ds, "throughput_slo")
    assert finding.passed and finding.metadata["records"] == 600 and finding.metadata["commits"] == 2


def test_throughput_does_not_judge_runs_smaller_than_a_second_of_target(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 50)}), {0: (0, 49)}, started_at=time.time() - 60)
    finding = evaluate(lake, ds, "throughput_slo")
    assert finding.passed and "too few" in finding.summary


def test_latency_fails_when_events_are_old_at_commit(lake):
    ds = dataset()
    healthy(lake, ds, commits=1)
    commit(lake, ds, rows({0: range(300, 400)}, event_age_s=120), {0: (300, 399)}, ledger={0: 399})
    finding = evaluate(lake, ds, "latency_slo")
    assert not finding.passed
    assert finding.metadata["rows"] == 100 and 119 < finding.metadata["p95_s"] < 130


# --- freshness ----------------------------------------------------------------------------------------------


def test_freshness_fails_on_a_stale_table(lake):
    ds = dataset(slo="{freshness_s: 60}")
    healthy(lake, ds, commits=1)
    table = lake.open_table(ds.table_path)
    uri = lake.table_uri(ds.table_path)
    assert health.evaluate(ds, table, uri, ["freshness"])["freshness"].passed
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    stale = health.evaluate(ds, table, uri, ["freshness"], now=later)["freshness"]
    assert not stale.passed and stale.metadata["age_s"] >= 299 and stale.metadata["limit_s"] == 60


def test_freshness_without_a_limit_reports_the_age_and_passes(lake):
    ds = dataset()
    healthy(lake, ds, commits=1)
    finding = evaluate(lake, ds, "freshness")
    assert finding.passed and "no limit set" in finding.summary and finding.metadata["limit_s"] == "none"


def test_freshness_with_a_limit_fails_when_there_is_no_table(lake):
    ds = dataset(slo="{freshness_s: 60}")
    assert not evaluate(lake, ds, "freshness").passed
    assert evaluate(lake, dataset(), "freshness").passed


def test_freshness_of_a_continuous_dataset_derives_its_limit_and_tells_idle_from_stalled(lake):
    ds = dataset(continuous="true", trigger_interval_s=5)
    assert health.freshness_limit(ds) == (75, "3 × trigger_interval_s (5 s) + 60 s")
    assert health.freshness_limit(dataset(continuous="true", slo="{freshness_s: 600}"))[0] == 600
    assert health.freshness_limit(dataset())[0] is None
    healthy(lake, ds, commits=1)
    table, uri = lake.open_table(ds.table_path), lake.table_uri(ds.table_path)
    asked = []

    def judge(minutes: float, waiting) -> health.Finding:
        now = datetime.now(timezone.utc) + timedelta(minutes=minutes)
        return health.evaluate(ds, table, uri, ["freshness"], now=now,
                               waiting=lambda: asked.append(1) or waiting)["freshness"]  # fmt: skip

    fresh = judge(0, 99)
    assert fresh.passed and fresh.metadata["limit_s"] == 75 and asked == []  # young: the topic is not asked
    stalled = judge(2, 12)
    assert not stalled.passed and stalled.metadata["records_waiting"] == 12 and "12 records wait" in stalled.summary
    idle = judge(2, 0)
    assert idle.passed and "idle stream makes no commits" in idle.summary
    unknown = judge(2, "cannot read the cluster metadata: timed out")
    assert unknown.passed and unknown.metadata["judged"] is False and "not judged" in unknown.summary
    assert not health.evaluate(ds, table, uri, ["freshness"], now=datetime.now(timezone.utc)
                               + timedelta(minutes=2))["freshness"].passed  # no topic to ask: by age alone
    empty = dataset(name="fresh_topic", continuous="true")
    nothing = health.evaluate(empty, None, "/nowhere", ["freshness"], waiting=lambda: 0)["freshness"]
    assert nothing.passed  # a new stream on an empty topic: no table, nothing waiting
    assert not health.evaluate(empty, None, "/nowhere", ["freshness"], waiting=lambda: 3)["freshness"].passed


@pytest.mark.kafka
def test_records_waiting_counts_by_the_ledger(lake, kafka, make_topic):
    from ingest_platform.dev.demo_data import produce, records
    from ingest_platform.monitoring.offsets import records_waiting

    topic = make_topic(partitions=2)
    ds = json_dataset(topic, name="waits")
    assert records_waiting(kafka, topic, ds.name, None) == 0
    produce(kafka, topic, records("clicks", 10), partition=0)
    produce(kafka, topic, records("clicks", 4, start=10), partition=1)
    commit(lake, ds, rows({0: range(0, 6)}), {0: (0, 5)})
    assert records_waiting(kafka, topic, ds.name, lake.open_table(ds.table_path)) == 4 + 4
    assert "not available" in records_waiting(kafka, topic + ".missing", ds.name, None)


# --- no_loss ------------------------------------------------------------------------------------------------


def test_no_loss_fails_on_a_gap_in_offsets(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 100)}), {0: (0, 99)})
    commit(lake, ds, rows({0: range(150, 200)}), {0: (150, 199)})  # 100..149 never ingested
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed and finding.metadata["gaps"] == 1
    assert finding.metadata["problems"][0] == {
        "partition": 0, "version": 1, "problem": "gap", "expected_first": 100, "first": 150
    }


def test_no_loss_allows_a_gap_recorded_as_retention_loss(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 100)}), {0: (0, 99)})
    commit(lake, ds, rows({0: range(150, 200)}), {0: (150, 199)}, data_loss={0: (100, 149)})
    finding = evaluate(lake, ds, "no_loss")
    assert finding.passed, finding.summary
    assert finding.metadata["retention_loss_records"] == 50 and "lost to retention" in finding.summary


def test_no_loss_fails_when_a_partition_added_later_does_not_start_at_0(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(500, 600)}), {0: (500, 599)})  # a new table over an old topic: not loss
    assert evaluate(lake, ds, "no_loss").passed
    commit(lake, ds, rows({1: range(100, 150)}), {1: (100, 149)})  # partition 1 added later; 0..99 gone
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed and finding.metadata["gaps"] == 1
    assert finding.metadata["problems"][0] == {
        "partition": 1, "version": 1, "problem": "gap", "expected_first": 0, "first": 100
    }
    other = dataset(name="recorded")
    commit(lake, other, rows({0: range(500, 600)}), {0: (500, 599)})
    commit(lake, other, rows({1: range(100, 150)}), {1: (100, 149)}, data_loss={1: (0, 99)})  # skip: recorded
    assert evaluate(lake, other, "no_loss").passed


def test_no_loss_fails_on_overlapping_ranges(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 100)}), {0: (0, 99)})
    commit(lake, ds, rows({0: range(90, 200)}), {0: (90, 199)})  # 90..99 twice: duplicates
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed and finding.metadata["overlaps"] == 1


def test_no_loss_fails_when_rows_do_not_match_consumed_records(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 100)}), {0: (0, 99)}, records=100, skipped=0)
    commit(lake, ds, rows({0: range(100, 190)}), {0: (100, 199)}, records=100, skipped=3)  # 7 records vanished
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed
    assert finding.metadata["problems"][0]["problem"] == "consumed != rows + dead-lettered + skipped"
    assert finding.metadata["problems"][0]["rows"] == 90


def test_no_loss_accepts_skipped_and_dead_lettered_records(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 95)}), {0: (0, 99)}, records=100, skipped=5)
    assert evaluate(lake, ds, "no_loss").passed


def test_no_loss_fails_when_the_ledger_differs_from_the_ranges(lake):
    ds = dataset()
    commit(lake, ds, rows({0: range(0, 100)}), {0: (0, 99)}, ledger={0: 120})
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed
    assert finding.metadata["problems"][0]["ledger"] == 120 and finding.metadata["problems"][0]["last_range_end"] == 99


def test_no_loss_fails_when_rows_leave_the_table_outside_ingestion(lake):
    ds = dataset()
    healthy(lake, ds, commits=2)
    lake.open_table(ds.table_path).delete("_kafka_offset < 10")
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed and finding.metadata["problems"][0]["problem"].startswith("table rows differ")


def test_no_loss_checks_the_history_that_is_left_after_log_cleanup(lake):
    ds = dataset()
    healthy(lake, ds, commits=3)
    table = lake.open_table(ds.table_path)
    table.create_checkpoint()
    log = Path(lake.table_uri(ds.table_path)) / "_delta_log"
    for version in (0, 1):  # what delta.logRetentionDuration does to old commits
        (log / f"{version:020d}.json").unlink()
    finding = evaluate(lake, ds, "no_loss")
    assert finding.passed, finding.summary
    assert finding.metadata["history_complete"] is False and finding.metadata["history_from_version"] == 2
    assert "history from version 2" in finding.summary


# --- key_unique ---------------------------------------------------------------------------------------------


def upsert_dataset():
    return dataset_from_yaml("""
        datasets:
          - name: customers
            source: test
            topic: t
            format: json
            mode: upsert
            key: [id]
            slo: {throughput_rps: 100, file_size_mb: {min: 0.001, max: 10}}
    """)


def test_key_unique_passes_on_unique_keys_and_fails_on_duplicates(lake):
    ds = upsert_dataset()
    assert "key_unique" in health.check_names(ds) and "key_unique" not in health.check_names(dataset())
    commit(lake, ds, rows({0: range(0, 10)}, ids=range(10)), {0: (0, 9)})
    assert evaluate(lake, ds, "key_unique").passed
    commit(lake, ds, rows({0: range(10, 13)}, ids=[3, 4, 42]), {0: (10, 12)})
    finding = evaluate(lake, ds, "key_unique")
    assert not finding.passed
    assert finding.metadata["duplicated_keys"] == 2 and finding.metadata["surplus_rows"] == 2
    assert sorted(row["id"] for row in finding.metadata["sample"]) == [3, 4]


def test_upsert_no_loss_reconciles_changes_and_key_unique_uses_the_recorded_key(lake):
    """Upsert commits: consumed = applied + dead-lettered + skipped (rows are not comparable after a MERGE);
    a Debezium table keyed by the message key has its key recorded in the commit metadata."""
    ds = dataset_from_yaml(
        "datasets:\n  - {name: cdc, source: s, topic: t, format: debezium, mode: upsert, max_dlq_ratio: 0.5}"
    )
    counts = {"applied": 7, "dead_lettered": 2, "key": ["id"]}
    commit(lake, ds, rows({0: range(0, 5)}, ids=range(5)), {0: (0, 9)}, records=10, skipped=1, extra=counts)
    assert evaluate(lake, ds, "no_loss").passed and evaluate(lake, ds, "key_unique").passed
    commit(lake, ds, rows({0: range(10, 12)}, ids=[1, 2]), {0: (10, 19)}, records=10, skipped=0, extra=counts)
    finding = evaluate(lake, ds, "no_loss")
    assert not finding.passed
    assert finding.metadata["problems"][0]["problem"] == "consumed != applied + dead-lettered + skipped"
    assert evaluate(lake, ds, "key_unique").metadata["duplicated_keys"] == 2


# --- through Dagster ----------------------------------------------------------------------------------------


def _settings(tmp_path: Path, catalog_file: Path) -> Settings:
    return Settings(catalog_path=str(catalog_file), lake_root=str(tmp_path / "lake"), kafka_bootstrap="127.0.0.1:9")


CATALOG = f"""
datasets:
  - name: good
    source: test
    topic: t.good
    format: json
    slo: {SLO}
  - name: gappy
    source: test
    topic: t.gappy
    format: json
    slo: {SLO}
"""


@pytest.fixture
def two_tables(tmp_path, clean_ingest_env):
    """A catalog of two datasets: ``good`` is healthy, ``gappy`` has a gap in offsets and many small files."""
    from ingest_platform.catalog import load_catalog

    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(CATALOG)
    settings = _settings(tmp_path, catalog_file)
    catalog = load_catalog(catalog_file)
    lake = LakeLocation(settings.lake_root)
    healthy(lake, catalog.get("good"))
    gappy = catalog.get("gappy")
    commit(lake, gappy, rows({0: range(0, 100)}), {0: (0, 99)})
    commit(lake, gappy, rows({0: range(150, 200)}), {0: (150, 199)})
    return settings, catalog


def test_checks_are_declared_for_every_dataset_with_severity_and_blocking(two_tables):
    settings, catalog = two_tables
    defs = build_definitions(settings)  # includes check_definitions(catalog)
    graph = defs.resolve_asset_graph()
    keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert keys == {(f"lake/test/{d}", c) for d in ("good", "gappy")
                    for c in ("file_size", "throughput_slo", "latency_slo", "freshness", "no_loss")}  # fmt: skip
    spec = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey(["lake", "test", "good"]), "no_loss"))
    assert spec.blocking and "no_loss" in BLOCKING and SEVERITY["file_size"] == dg.AssetCheckSeverity.WARN
    assert {s.name for s in defs.sensors} >= {CHECKS_SENSOR} and CHECKS_SENSOR == "ingest_checks_hourly"
    assert {s.name for s in defs.schedules} >= {"ingest_maintenance_daily"}
    assert "ingest_checks" not in {j.name for j in defs.jobs}  # no checks job to load: the sensor uses the base job


def hourly_checks_request(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.RunRequest:
    """The run the hourly checks sensor requests once its cron time has passed since the last tick."""
    sensor = defs.resolve_sensor_def(CHECKS_SENSOR)

    def tick(cursor):
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                                            sensor_name=CHECKS_SENSOR))  # fmt: skip

    first = tick(None)  # records the latest cron time, requests nothing (a schedule does not catch up either)
    assert not first.run_requests and first.cursor == latest_hourly_time(datetime.now(timezone.utc)).isoformat()
    assert not tick(first.cursor).run_requests
    hour_before = (datetime.fromisoformat(first.cursor) - timedelta(hours=1)).isoformat()
    (request,) = tick(hour_before).run_requests
    assert request.run_key == f"checks:{first.cursor}" and request.job_name == "__ASSET_JOB"
    return request


def run_checks_only(defs: dg.Definitions, instance: dg.DagsterInstance):
    """Execute the hourly checks sensor's run: the base asset job with every check and no asset."""
    request = hourly_checks_request(defs, instance)
    assert request.asset_selection == []
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection=set(request.asset_check_keys))
    return job.execute_in_process(instance=instance, raise_on_error=False)


def test_checks_run_through_dagster(two_tables):
    settings, catalog = two_tables
    defs = build_definitions(settings)  # includes check_definitions(catalog)
    result = run_checks_only(defs, dg.DagsterInstance.ephemeral())
    assert result.get_asset_materialization_events() == []  # checks only: nothing ingested
    evaluations = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert len(evaluations) == 10
    assert all(e.passed for (d, _), e in evaluations.items() if d == "good")
    gap = evaluations[("gappy", "no_loss")]  # blocking: its step fails too
    assert not result.success
    assert not gap.passed and gap.severity == dg.AssetCheckSeverity.ERROR
    assert gap.metadata["gaps"].value == 1 and isinstance(gap.metadata["table_rows"], dg.IntMetadataValue)


def test_a_crashing_table_fails_the_step_but_keeps_the_other_datasets_results(two_tables):
    """One op checks several datasets: a table that cannot be read must not hide the others' results."""
    settings, catalog = two_tables
    log = Path(settings.lake_root) / "test" / "gappy" / "_delta_log"
    for entry in log.glob("*.json"):
        entry.write_text("{not json")
    defs = build_definitions(settings)
    result = run_checks_only(defs, dg.DagsterInstance.ephemeral())
    evaluations = {(e.asset_key.path[-1], e.check_name) for e in result.get_asset_check_evaluations()}
    assert {d for d, _ in evaluations} == {"good"} and len(evaluations) == 5
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "the checks of 1 dataset(s) could not run: gappy:" in failure.step_failure_data.error.message


def test_cli_prints_a_table_and_exits_1_on_error_failures(two_tables, monkeypatch):
    settings, _ = two_tables
    monkeypatch.setenv("INGEST_CATALOG", settings.catalog_path)
    monkeypatch.setenv("INGEST_LAKE_ROOT", settings.lake_root)
    result = CliRunner().invoke(main, ["checks"])
    assert result.exit_code == 1, result.output
    assert "lake/test/gappy" in result.output and "FAIL" in result.output
    assert "10 checks: 9 passed, 0 warnings, 1 errors" in result.output

    result = CliRunner().invoke(main, ["checks", "good", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 5 and {line["dataset"] for line in lines} == {"good"}
    assert set(lines[0]) >= {"dataset", "check", "passed", "severity", "metadata"}
    no_loss = next(line for line in lines if line["check"] == "no_loss")
    assert no_loss["passed"] and no_loss["severity"] == "ERROR" and no_loss["metadata"]["gaps"] == 0


def test_cli_warnings_do_not_fail(tmp_path, clean_ingest_env):
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(CATALOG.replace("min: 0.001", "min: 1"))  # every file is small: file_size warns
    settings = _settings(tmp_path, catalog_file)
    from ingest_platform.catalog import load_catalog

    good: Catalog = load_catalog(catalog_file)
    healthy(LakeLocation(settings.lake_root), good.get("good"), commits=4)
    result = CliRunner().invoke(main, ["checks", "good", "--catalog", str(catalog_file),
                                       "--lake-root", settings.lake_root])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warn" in result.output and "1 warnings, 0 errors" in result.output
