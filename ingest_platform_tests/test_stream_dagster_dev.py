"""With ``dagster dev`` and a catalog, continuous datasets stream with no further command (docs/DESIGN.md §10.9):
the supervisor starts the group's stream run, its commits appear on the asset, the UI's Terminate ends the run
CANCELED and SIGTERM to the run process ends it SUCCESS — both after finishing the in-flight commit — and the
supervisor starts the stream again; the table holds every record once."""

from __future__ import annotations

import os
import re
import signal

import dagster as dg
import pytest

from ingest_platform.catalog import load_catalog
from ingest_platform.dev.local_dagster import LocalDagster
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.stream_helpers import SteadyProducer, assert_exactly_once, table_rows, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
GROUP_TAG = "ingest/stream-group"


def stream_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(tags={GROUP_TAG: "live"}))]


def started_run(instance: dg.DagsterInstance, after: set[str]) -> dg.DagsterRun | None:
    """A stream run not in ``after`` that has started and committed (a materialization in it)."""
    for run in stream_runs(instance):
        if run.run_id in after or run.status != dg.DagsterRunStatus.STARTED:
            continue
        records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if records.records:
            return run
    return None


def run_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        found = re.search(r"Started process for run \(pid: (\d+)\)", record.event_log_entry.message or "")
        if found:
            return int(found.group(1))
    raise AssertionError(f"no process id recorded for run {run_id}")


def status_of(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_dagster_dev_streams_continuous_datasets_and_stops_them_gracefully(kafka, kafka_broker, make_topic,
                                                                          tmp_path):  # fmt: skip
    topic = make_topic(partitions=2)
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(
        "datasets:\n"
        f"  - {{name: events, source: live, topic: {topic}, format: json, continuous: true,"
        " trigger_interval_s: 0.5, materialization_interval_s: 2}\n"
    )
    dataset = load_catalog(catalog_file).get("events")
    lake = LakeLocation(str(tmp_path / "lake"))
    env = {"INGEST_CATALOG": str(catalog_file), "INGEST_LAKE_ROOT": lake.root,
           "INGEST_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}  # fmt: skip
    producer = SteadyProducer(kafka, topic, batch=20, every_s=0.2)
    home = tmp_path / "dagster_home"
    with LocalDagster(home, env) as ui:
        instance = dg.DagsterInstance.from_config(str(home))
        producer.start()
        try:
            first = wait_for(lambda: started_run(instance, set()), timeout_s=180, what="the supervised stream run")
            assert first.tags["ingest/trigger"] == "supervisor" and first.job_name == "stream__live"
            ui.terminate_run(first.run_id)  # the UI's button
            wait_for(lambda: status_of(instance, first.run_id) == dg.DagsterRunStatus.CANCELED, timeout_s=60,
                     what="the terminated run to end CANCELED")  # fmt: skip

            second = wait_for(lambda: started_run(instance, {first.run_id}), timeout_s=180, what="a restart")
            os.kill(run_pid(instance, second.run_id), signal.SIGTERM)  # e.g. the run's pod evicted
            wait_for(lambda: status_of(instance, second.run_id) == dg.DagsterRunStatus.SUCCESS, timeout_s=60,
                     what="the signalled run to end SUCCESS")  # fmt: skip
            third = wait_for(lambda: started_run(instance, {first.run_id, second.run_id}), timeout_s=180,
                             what="another restart")  # fmt: skip
        finally:
            produced = producer.stop()
        wait_for(lambda: table_rows(lake, dataset) >= produced, timeout_s=90, what="every record in the table")
        assert status_of(instance, third.run_id) == dg.DagsterRunStatus.STARTED
        for run in (first, second):  # each stopped after finishing its work: no crash, no step failure
            failures = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
            assert status_of(instance, run.run_id) != dg.DagsterRunStatus.FAILURE
            assert run.run_id == first.run_id or failures == []
        reported = instance.fetch_materializations(dg.AssetKey(dataset.asset_path), limit=10_000).records
        assert {r.event_log_entry.run_id for r in reported} >= {first.run_id, second.run_id}
        instance.dispose()
    assert_exactly_once(lake, dataset, produced)
