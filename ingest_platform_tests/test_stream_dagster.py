"""The Dagster layer of streams (docs/DESIGN.md §10.8–10.9) against the real broker and real tables: the stream
job's run and its summarised materializations, the supervisor sensor (``evaluate_tick``), maintenance beside a
stream, the lag sensor leaving continuous datasets to their stream."""

from __future__ import annotations

import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from ingest_platform.catalog import load_catalog
from ingest_platform.definitions import build_definitions
from ingest_platform.defs import streams
from ingest_platform.defs.maintenance import MAINTENANCE_JOB, maintenance_run_config
from ingest_platform.defs.sensors import DATASET_TAG, LAG_SENSOR, MAINTAINS_TAG
from ingest_platform.defs.streams import STREAM_GROUP_TAG, SUPERVISOR, stream_job_name
from ingest_platform.dev.demo_data import produce, records
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.settings import Settings
from ingest_platform.streaming.supervision import SupervisionPolicy
from ingest_platform_tests.stream_helpers import (
    FAST,
    SteadyProducer,
    StreamThread,
    assert_exactly_once,
    table_rows,
    wait_for,
)

pytestmark = [pytest.mark.kafka]


class Location:
    """A catalog file, the code location built from it, an instance, and the lake."""

    def __init__(self, tmp_path: Path, kafka, datasets: str):
        catalog_file = tmp_path / "catalog.yaml"
        catalog_file.write_text("datasets:\n" + textwrap.indent(textwrap.dedent(datasets), "  "))
        self.catalog = load_catalog(catalog_file)
        self.defs = build_definitions(Settings(str(catalog_file), str(tmp_path / "lake"), kafka.bootstrap_servers))
        self.instance = dg.DagsterInstance.ephemeral()
        self.lake = LakeLocation(str(tmp_path / "lake"))
        self.cursors: dict[str, str | None] = {}

    def tick(self, name: str):
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(name), definitions=self.defs, sensor_name=name,
            resources=self.defs.get_repository_def().get_top_level_resources(),
        )  # fmt: skip
        result = self.defs.get_repository_def().get_sensor_def(name).evaluate_tick(context)
        self.cursors[name] = result.cursor
        return result

    def stream(self, group: str, duration_s: float, tags: dict | None = None):
        job = self.defs.resolve_job_def(stream_job_name(group))
        config = {"ops": {f"serve__{group}": {"config": {"duration_s": duration_s}}}}
        return job.execute_in_process(instance=self.instance, run_config=config, tags=tags, raise_on_error=False)

    def run_events(self, run_id: str) -> list:
        return [r.event_log_entry for r in self.instance.get_records_for_run(run_id, limit=100_000).records]


def materializations(entries: list, name: str) -> list[dg.AssetMaterialization]:
    return [e.asset_materialization for e in entries
            if e.asset_materialization is not None and e.asset_materialization.asset_key.path[-1] == name]


def stream_checks(entries: list, name: str) -> list[dg.AssetCheckEvaluation]:
    found = []
    for entry in entries:
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        if isinstance(data, dg.AssetCheckEvaluation) and data.asset_key.path[-1] == name:
            found.append(data)
    return found


def test_stream_run_summarises_commits_and_streams_past_a_failed_dataset(tmp_path, kafka, make_topic):
    good, bad = make_topic(partitions=3), make_topic()
    location = Location(tmp_path, kafka, f"""
        - {{name: good, source: g, topic: {good}, format: json, continuous: true, trigger_interval_s: 0.1,
            materialization_interval_s: 3}}
        - {{name: bad, source: g, topic: {bad}, format: json, continuous: true, trigger_interval_s: 0.1}}
    """)  # fmt: skip
    producer = SteadyProducer(kafka, good, batch=20, every_s=0.1)
    producer.start()
    try:
        time.sleep(2.0)
        produce(kafka, bad, iter([(b"k", b"{broken")]))
        import threading

        stopper = threading.Timer(8.0, producer.halt.set)  # production stops ~4 s before the run ends
        stopper.start()
        result = location.stream("g", duration_s=14)
    finally:
        produced = producer.stop()
    assert result.success, result.all_events[-1]  # the group streamed to the end, 'bad' aside
    entries = location.run_events(result.run_id)
    table = location.lake.open_table("g/good")
    commits = table.version()  # version 0 creates the empty table (DESIGN §2), every later one is a stream commit
    reported = materializations(entries, "good")
    assert sum(m.metadata["records"].value for m in reported) == produced == table_rows(
        location.lake, location.catalog.get("good"))
    assert sum(m.metadata["commits"].value for m in reported) == commits
    # the event log grows with time, not with the commit rate: at most one summary per 3 s (+ the first
    # commit, at once, and the final flush), whatever the commits; no log line per commit either
    assert len(reported) <= 14 / 3 + 2 and len(reported) < commits, (len(reported), commits)
    logs = [e for e in entries if e.dagster_event is None]
    assert len(logs) <= 10 and len(entries) < 40 + len(reported), (len(logs), len(entries))
    assert reported[-1].metadata["dagster/row_count"].value == produced
    assert reported[-1].metadata["stream_runner"].value == "dagster"
    columns = {c.name: c.type for c in reported[-1].metadata["dagster/column_schema"].value.columns}
    assert columns["_kafka_offset"] == "long" and "order_id" in columns  # the Delta schema, as batch runs show it

    failed = [c for c in stream_checks(entries, "bad") if not c.passed]
    assert len(failed) == 1 and "offset 0" in failed[0].description and result.run_id in failed[0].description
    assert stream_checks(entries, "good")[-1].passed
    failed_at = next(e.timestamp for e in entries if e.dagster_event is not None
                     and stream_checks([e], "bad") and not stream_checks([e], "bad")[0].passed)  # fmt: skip
    assert any(e.timestamp > failed_at for e in entries if materializations([e], "good"))  # streamed on
    assert materializations(entries, "bad") == []
    assert_exactly_once(location.lake, location.catalog.get("good"), produced)


def test_supervisor_starts_restarts_with_backoff_and_gives_up(tmp_path, kafka, make_topic, monkeypatch):
    bad, other = make_topic(), make_topic()
    produce(kafka, bad, iter([(b"k", b"not json")]))
    policy = SupervisionPolicy(backoff_s=10, max_backoff_s=15, max_failures=3, healthy_after_s=600)
    monkeypatch.setattr(streams, "DEFAULT_POLICY", policy)
    location = Location(tmp_path, kafka, f"""
        - {{name: bad, source: g, topic: {bad}, format: json, continuous: true, trigger_interval_s: 0.1}}
        - {{name: other, source: x, topic: {other}, format: json, continuous: true, stream_runner: external}}
    """)  # fmt: skip
    clock = [time.time()]
    monkeypatch.setattr(streams, "_now", lambda: clock[0])

    first = location.tick(SUPERVISOR)
    (request,) = first.run_requests
    assert request.job_name == "stream__g" and request.tags[STREAM_GROUP_TAG] == "g"
    assert request.run_key == "stream:stream__g:after:none"
    assert not any(r.job_name == "stream__x" for r in first.run_requests)  # external: never started here

    restarts = []
    for attempt in range(3):
        run = location.stream("g", duration_s=30, tags=request.tags)
        assert not run.success  # 'bad' stops on its record: no dataset left, the run fails
        clock[0] = time.time()
        waiting = location.tick(SUPERVISOR)
        if attempt == 2:
            break
        assert waiting.run_requests == []
        backoff = (10, 15)[attempt]  # doubling, capped at max_backoff_s
        assert f"restart {attempt + 1} of 2 in {backoff} s" in waiting.skip_message, waiting.skip_message
        assert "not a valid JSON" in waiting.skip_message or "JSON" in waiting.skip_message
        assert "external (served by stream workers, not supervised): x" in waiting.skip_message
        clock[0] += backoff + 1
        (request,) = location.tick(SUPERVISOR).run_requests
        assert request.run_key == f"stream:stream__g:after:{run.run_id}"
        restarts.append(request)
    assert len(restarts) == 2
    assert waiting.run_requests == [] and "gave up after 3 failed runs in a row" in waiting.skip_message
    (evaluation,) = waiting.asset_events
    assert evaluation.check_name == "stream" and not evaluation.passed and "gave up" in evaluation.description
    clock[0] += 3600
    again = location.tick(SUPERVISOR)
    assert again.run_requests == [] and again.asset_events == []  # gave up for good, reported once

    by_hand = dg.DagsterRun(job_name="stream__g", run_id=uuid.uuid4().hex, status=dg.DagsterRunStatus.STARTING,
                               tags={STREAM_GROUP_TAG: "g"})
    location.instance.add_run(by_hand)
    starting = location.tick(SUPERVISOR)  # a run launched by hand: the supervisor starts no second one
    assert starting.run_requests == [] and f"g: run {by_hand.run_id[:8]} is starting" in starting.skip_message


def test_lag_sensor_observes_continuous_datasets_and_ignores_maintenance_runs(tmp_path, kafka, make_topic):
    streamed, batch = make_topic(), make_topic()
    location = Location(tmp_path, kafka, f"""
        - {{name: streamed, source: s, topic: {streamed}, format: json, continuous: true, lag_threshold: 1}}
        - {{name: batch, source: s, topic: {batch}, format: json, lag_threshold: 1}}
    """)  # fmt: skip
    produce(kafka, streamed, records("clicks", 5))
    produce(kafka, batch, records("clicks", 5))
    location.instance.add_run(dg.DagsterRun(job_name=MAINTENANCE_JOB,
                                            run_id=uuid.uuid4().hex, status=dg.DagsterRunStatus.STARTED,
                                            tags={MAINTAINS_TAG: "batch"}))  # fmt: skip
    result = location.tick(LAG_SENSOR)
    (request,) = result.run_requests  # the compaction running does not hold the batch dataset back
    assert request.tags[DATASET_TAG] == "batch"
    observed = {e.asset_key.path[-1]: e.metadata["lag"].value for e in result.asset_events}
    assert observed == {"streamed": 5, "batch": 5}  # the continuous dataset is observed, never run in batch


def test_maintenance_beside_a_stream_takes_no_pool_and_loses_nothing(tmp_path, kafka, make_topic):
    topic = make_topic(partitions=2)
    location = Location(tmp_path, kafka, f"""
        - {{name: events, source: m, topic: {topic}, format: json, continuous: true, partition_by: [date],
            slo: {{file_size_mb: {{min: 1, max: 64}}}}}}
    """)  # fmt: skip
    dataset = location.catalog.get("events")
    job = location.defs.resolve_job_def(MAINTENANCE_JOB)
    assert {node.definition.pool for node in job.graph.node_dict.values()} == {None}  # the stream's neither
    producer = SteadyProducer(kafka, topic, batch=30, every_s=0.05)
    with StreamThread([dataset], kafka, location.lake, FAST):
        producer.start()
        compacted = []
        try:
            for _ in range(3):  # compactions race the stream's appends
                wait_for(lambda: (location.lake.open_table(dataset.table_path) is not None
                                  and len(location.lake.open_table(dataset.table_path).file_uris()) >= 4),
                         what="a few small files")  # fmt: skip
                run = job.execute_in_process(instance=location.instance, run_config=maintenance_run_config(dataset))
                assert run.success
                compacted += [e.event_specific_data.asset_observation.metadata["files_removed"].value
                              for e in run.all_events if e.is_asset_observation
                              and e.event_specific_data.asset_observation.metadata["maintenance"].value == "compact"]
        finally:
            produced = producer.stop()
        wait_for(lambda: table_rows(location.lake, dataset) >= produced, what="every record")
    assert sum(compacted) >= 4
    assert_exactly_once(location.lake, dataset, produced)
