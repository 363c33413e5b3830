"""External stream workers report to Dagster (``ingest-platform stream --report-to-dagster``): the commits as
runless materialization summaries on the assets, a stopped dataset as its failed ``stream`` check — written
into a real instance (a temporary DAGSTER_HOME holding the project's dagster.yaml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.stream_helpers import table_rows, wait_for

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "ingest-platform")


@pytest.fixture
def dagster_home(tmp_path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def materializations(instance: dg.DagsterInstance, path: list[str]) -> list[dg.AssetMaterialization]:
    result = instance.fetch_materializations(dg.AssetKey(path), limit=10_000)
    events = [r.event_log_entry for r in result.records]
    assert all(e.run_id == "" for e in events), "runless events"
    return [e.asset_materialization for e in sorted(events, key=lambda e: e.timestamp)]


def test_external_worker_reports_summaries_and_a_stopped_dataset(kafka, kafka_broker, make_topic, tmp_path,
                                                                 dagster_home):  # fmt: skip
    good, bad = make_topic(partitions=2), make_topic()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "defaults: {stream_runner: external, continuous: true, trigger_interval_s: 0.3,"
        " materialization_interval_s: 2}\n"
        "datasets:\n"
        f"  - {{name: good, source: ext, topic: {good}, format: json}}\n"
        f"  - {{name: bad, source: ext, topic: {bad}, format: json}}\n"
    )
    lake_root = str(tmp_path / "lake")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    process = subprocess.Popen(
        [CLI, "stream", "--all-continuous", "--catalog", str(catalog), "--lake-root", lake_root, "--bootstrap",
         kafka_broker.bootstrap, "--no-upkeep", "--duration", "14", "--report-to-dagster"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lake = LakeLocation(lake_root)
    (good_dataset,) = [d for d in _catalog(catalog).datasets if d.name == "good"]
    try:
        for burst in range(8):  # a burst every 0.8 s: several commits per 2 s materialization interval
            produce(kafka, good, records("orders", 50, seed=burst, start=burst * 50))
            time.sleep(0.8)
        produce(kafka, bad, iter([(b"k", b"this is not JSON")]))
        wait_for(lambda: table_rows(lake, good_dataset) == 400, timeout_s=60, what="400 rows")
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, stderr  # 'bad' stopped on its record; 'good' streamed to the end
    assert "error: bad:" in stderr

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        reported = materializations(instance, ["lake", "ext", "good"])
        last_version = lake.open_table("ext/good").version()
        commits = last_version  # version 0 creates the empty table (DESIGN §2); each later one is a stream commit
        assert sum(m.metadata["records"].value for m in reported) == 400
        assert sum(m.metadata["commits"].value for m in reported) == commits
        assert len(reported) < commits  # summarised: several commits per report
        last = reported[-1].metadata
        assert last["dagster/row_count"].value == 400 and last["last_version"].value == last_version
        assert last["dagster/uri"].value == lake.table_uri("ext/good")
        assert last["dagster/table_name"].value == "lake.ext.good"
        assert last["stream_runner"].value == "external" and last["stream_group"].value == "ext"
        assert {"latency_p50_s", "latency_p99_s", "bytes", "files_written", "offsets"} <= set(last)

        check_key = dg.AssetCheckKey(dg.AssetKey(["lake", "ext", "bad"]), "stream")
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[check_key]
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert "offset 0" in evaluation.description and "external stream worker" in evaluation.description
        ok_key = dg.AssetCheckKey(dg.AssetKey(["lake", "ext", "good"]), "stream")
        ok = instance.event_log_storage.get_latest_asset_check_execution_by_key([ok_key])[ok_key]
        assert ok.event.dagster_event.event_specific_data.passed is True
        assert materializations(instance, ["lake", "ext", "bad"]) == []


def test_report_to_dagster_without_dagster_home_says_what_to_set(tmp_path, monkeypatch):
    from ingest_platform.cli.main import main

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("datasets:\n  - {name: a, source: s, topic: a, format: json, continuous: true}\n")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = CliRunner().invoke(main, ["stream", "--all-continuous", "--catalog", str(catalog), "--lake-root",
                                       str(tmp_path / "lake"), "--report-to-dagster", "--duration", "1"])
    assert result.exit_code == 1
    assert "--report-to-dagster needs DAGSTER_HOME" in result.output


def _catalog(path: Path):
    from ingest_platform.catalog import load_catalog

    return load_catalog(path)
