"""Continuous datasets on ``engine: spark``: a Structured Streaming query per dataset whose ``foreachBatch`` writes
each micro-batch as one Delta commit on the offset protocol (docs/DESIGN.md §10.10). The Spark checkpoint is never
the source of truth: deleting it, racing a batch run or killing the driver loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.runner import run_dataset
from ingest_platform.lake.commit import ConcurrentWriterError, run_metadata_of
from ingest_platform.lake.ledger import app_id
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.streaming.process import StreamSettings
from ingest_platform.streaming.spark_checkpoint import checkpoint_dir, disagreement, resume_offsets
from ingest_platform_tests.helpers import dataset_from_yaml
from ingest_platform_tests.stream_helpers import StreamThread, assert_exactly_once, table_rows, wait_for
from ingest_platform_tests.test_stream_process import CLI, SteadyProducer

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.slow]


def spark_dataset(topic: str, name: str = "sparked", engine: str = "spark", trigger_s: float = 1.0, extra: str = ""):
    return dataset_from_yaml(f"""
        datasets:
          - name: {name}
            source: streamed
            topic: {topic}
            format: json
            engine: {engine}
            continuous: true
            trigger_interval_s: {trigger_s}
            partition_by: [date]
            {extra}
    """)


def settings(tmp_path: Path) -> StreamSettings:
    return StreamSettings(metadata_refresh_s=1.0, upkeep=None, spark_checkpoint_root=str(tmp_path / "checkpoints"))


def metric(process, name: str) -> float:
    text = generate_latest(process.metrics.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_micro_batches_are_single_commits_and_a_deleted_checkpoint_loses_and_duplicates_nothing(
    kafka, make_topic, tmp_path, spark
):
    topic = make_topic(partitions=3)
    dataset = spark_dataset(topic)
    lake = LakeLocation(str(tmp_path / "lake"))
    checkpoint = checkpoint_dir(tmp_path / "checkpoints", dataset.table_path, lake.table_uri(dataset.table_path))
    produce(kafka, topic, records("orders", 300))
    with StreamThread([dataset], kafka, lake, settings(tmp_path), spark_session=lambda _profile: spark) as stream:
        wait_for(lambda: table_rows(lake, dataset) >= 300, timeout_s=180, what="the backlog")
        time.sleep(1.5)  # a scrape after the last commit's metrics
        process = stream.process
        outcome = stream.stop()
    assert outcome.clean, outcome.failed
    assert_exactly_once(lake, dataset, 300)
    events = stream.events
    print("micro-batch commits (s):", [round(e.commit_duration_s, 2) for e in events], [e.records for e in events])
    assert events and sum(e.records for e in events) == 300 == metric(process, "ingestion_records_processed_total")
    assert metric(process, "ingestion_delta_commits_total") == len(events)
    assert metric(process, "ingestion_processing_duration_seconds_count") == 300
    table = lake.open_table(dataset.table_path)
    # Every micro-batch is ONE commit holding every partition's txn: the ledger is each partition's last offset.
    ledger = {p: table.transaction_version(app_id(dataset.name, p)) for p in range(3)}
    assert ledger == {p: max(last for e in events for q, (_, last) in e.ranges.items() if q == p) for p in range(3)}
    streamed = [m for m in map(run_metadata_of, table.history()) if m and "spark_batch_id" in m]
    assert len(streamed) == len(events) and {m["engine"] for m in streamed} == {"spark"}
    # A clean stop leaves a checkpoint that resumes exactly at the ledger: the next query starts on it.
    assert disagreement(resume_offsets(checkpoint, topic), {p: last + 1 for p, last in ledger.items()}) is None

    # A stop while a micro-batch commits lets it finish (a deadline for this loaded machine's slow batches).
    patient = replace(settings(tmp_path), stop_timeout_s=240)
    with StreamThread([dataset], kafka, lake, patient, spark_session=lambda _profile: spark) as stream:
        loop = stream.process._loops[dataset.name]
        wait_for(lambda: loop.queries == 1 and loop.state.status == "running", timeout_s=60, what="the query")
        assert loop.resumed
        produce(kafka, topic, records("orders", 200, start=300))
        wait_for(lambda: loop._batch_started is not None, timeout_s=120, what="a micro-batch commit in flight")
        in_flight = loop.commits
        outcome = stream.stop(timeout_s=300)
    assert outcome.clean, outcome.failed
    assert loop.commits == in_flight + 1  # the stop let the micro-batch in flight commit
    assert 300 < table_rows(lake, dataset) <= 500

    # The checkpoint is deleted; the next query starts from the ledger: nothing lost, nothing twice.
    shutil.rmtree(checkpoint)
    produce(kafka, topic, records("orders", 150, start=500))
    with StreamThread([dataset], kafka, lake, settings(tmp_path), spark_session=lambda _profile: spark) as stream:
        wait_for(lambda: table_rows(lake, dataset) >= 650, timeout_s=180, what="the records after the deletion")
        time.sleep(3)  # a duplicate would land within a trigger or two
        assert not stream.process._loops[dataset.name].resumed
    assert_exactly_once(lake, dataset, 650)


def test_a_batch_run_racing_the_stream_commits_nothing_twice(kafka, make_topic, tmp_path, spark):
    topic = make_topic(partitions=2)
    dataset = spark_dataset(topic, name="raced", trigger_s=0.5)
    batch = spark_dataset(topic, name="raced", engine="embedded")  # the same table and ledger, another engine
    lake = LakeLocation(str(tmp_path / "lake"))
    producer = SteadyProducer(kafka, topic, batch=20, every_s=0.1)
    producer.start()
    runs = 0
    try:
        with StreamThread([dataset], kafka, lake, settings(tmp_path), spark_session=lambda _profile: spark) as st:
            wait_for(lambda: table_rows(lake, dataset) > 0, timeout_s=180, what="the stream's first commit")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    run_dataset(batch, kafka, lake)  # commits whatever the stream has not committed yet
                except ConcurrentWriterError:
                    pass  # the stream committed first: this run wrote nothing (the ledger guard), the next one retries
                runs += 1
            produced = producer.stop()
            wait_for(lambda: table_rows(lake, dataset) >= produced, timeout_s=120, what="every record")
            time.sleep(2)
            outcome = st.stop()
    finally:
        producer.stop()
    assert outcome.clean, outcome.failed
    assert runs >= 3 and produced > 200
    assert_exactly_once(lake, dataset, produced)
    engines = [m["engine"] for m in map(run_metadata_of, lake.open_table(dataset.table_path).history()) if m]
    assert "spark" in engines and "embedded" in engines  # both writers committed records


#: The stream's own driver in local mode (a CLI process of its own; the session's cluster runs the other tests).
LOCAL_SPARK = {"INGEST_SPARK_PROFILE": "local"}


def write_catalog(path: Path, topic: str) -> Path:
    path.write_text(
        "datasets:\n"
        f"  - {{name: killed, source: streamed, topic: {topic}, format: json, engine: spark, continuous: true,"
        " trigger_interval_s: 1}\n"
    )
    return path


def start_stream(catalog: Path, bootstrap: str, lake_root: str, checkpoints: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, "stream", "--all-continuous", "--catalog", str(catalog), "--lake-root", lake_root, "--no-upkeep",
         "--spark-checkpoint-root", str(checkpoints)],
        env={**os.environ, **env, "INGEST_KAFKA_BOOTSTRAP": bootstrap}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_kill_9_of_the_driver_mid_stream_then_restart_is_exact(kafka, kafka_broker, make_topic, tmp_path):
    topic = make_topic(partitions=3)
    catalog = write_catalog(tmp_path / "catalog.yaml", topic)
    lake = LakeLocation(str(tmp_path / "lake"))
    dataset = spark_dataset(topic, name="killed")
    producer = SteadyProducer(kafka, topic, batch=30, every_s=0.1)
    producer.start()
    began = time.monotonic()
    try:
        stream = start_stream(catalog, kafka_broker.bootstrap, lake.root, tmp_path / "ck", LOCAL_SPARK)
        try:
            wait_for(lambda: table_rows(lake, dataset) > 0, timeout_s=240, what="the driver's first commit")
            time.sleep(2.3)  # mid-stream: a micro-batch is being read or committed
        finally:
            stream.send_signal(signal.SIGKILL)
            assert stream.wait(30) == -9
        killed_with = table_rows(lake, dataset)
        print(f"killed after {time.monotonic() - began:.0f} s with {killed_with} rows")
    finally:
        produced = producer.stop()
    assert 0 < killed_with < produced
    stream = start_stream(catalog, kafka_broker.bootstrap, lake.root, tmp_path / "ck", LOCAL_SPARK)
    try:
        wait_for(lambda: table_rows(lake, dataset) >= produced, timeout_s=240, what="every record after the restart")
        print(f"caught up after {time.monotonic() - began:.0f} s")
        time.sleep(3)  # a duplicate would land within a trigger or two
        sent = time.monotonic()
        stream.send_signal(signal.SIGTERM)
        code = stream.wait(60)
        took = time.monotonic() - sent
    finally:
        if stream.poll() is None:
            stream.kill()
    assert code == 0, stream.stderr.read()[-3000:]
    print(f"SIGTERM -> exit {took:.1f} s")
    assert took < 30, f"SIGTERM -> exit took {took:.1f} s"
    assert_exactly_once(lake, dataset, produced)


def test_dead_letters_and_a_retention_gap_skipped_by_on_data_loss_on_the_spark_stream(
    kafka, kafka_broker, make_topic, tmp_path, spark
):
    """A record that is not JSON goes to the dead-letter table once, in the micro-batch's commit; records deleted by
    retention before the stream read them are skipped under ``on_data_loss: skip`` and recorded in the commit."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from ingest_platform.lake.dead_letters import read_dead_letters

    topic = make_topic(partitions=1)
    dataset = spark_dataset(topic, extra="max_dlq_ratio: 0.5\n            on_data_loss: skip")
    lake = LakeLocation(str(tmp_path / "lake"))
    produce(kafka, topic, records("orders", 50, seed=21))
    produce(kafka, topic, iter([(b"k", b"{not json")]))  # offset 50
    with StreamThread([dataset], kafka, lake, settings(tmp_path), spark_session=lambda _profile: spark) as stream:
        wait_for(lambda: sum(e.records for e in stream.events) == 51, timeout_s=180, what="the first records")
    assert stream.stop().clean
    assert table_rows(lake, dataset) == 50
    dead = read_dead_letters(lake, dataset)
    assert dead is not None and dead.num_rows == 1
    assert dead.column("offset").to_pylist() == [50]
    assert sum(e.dead_letters for e in stream.events) == 1

    produce(kafka, topic, records("orders", 50, seed=22, start=50))  # offsets 51..100
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.delete_records([TopicPartition(topic, 0, 80)])[TopicPartition(topic, 0, 80)].result(timeout=30)
    with StreamThread([dataset], kafka, lake, settings(tmp_path), spark_session=lambda _profile: spark) as stream:
        wait_for(lambda: table_rows(lake, dataset) >= 71, timeout_s=180, what="the records after the gap")
        time.sleep(2)  # a duplicate would land within a trigger or two
    assert stream.stop().clean
    assert_exactly_once(lake, dataset, 71)
    runs = [run_metadata_of(h) for h in lake.open_table(dataset.table_path).history()]
    assert [r["data_loss"] for r in runs if r and "data_loss" in r] == [{"0": [51, 79]}]
    assert read_dead_letters(lake, dataset).num_rows == 1


@pytest.fixture(autouse=True)
def _no_thread_leak():
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("spark-stream-")]
    assert not leaked, f"stream loops still running: {leaked}"


def test_a_spark_cdc_stream_upserts_each_micro_batch_in_one_merge_commit(kafka, make_topic, tmp_path, spark):
    """A continuous ``engine: spark`` upsert dataset: every micro-batch is ONE commit (the first creates the table,
    later ones are copy-on-write MERGEs) carrying each partition's txn, and the table ends as the source's last
    state (updates, deletes, re-inserts of the same keys across micro-batches)."""
    from ingest_platform.dev import cdc_data
    from ingest_platform_tests.cdc_helpers import cdc_dataset, expected_rows, table_state

    topic = make_topic(partitions=3)
    dataset = cdc_dataset(topic, name="users_streamed", engine="spark", continuous=True, trigger_interval_s=1.0)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=30, changes=60, seed=23), topic=topic)
    first = next(i for i, e in enumerate(events) if e.value is None or json.loads(e.value)["op"] != "r")
    lake = LakeLocation(str(tmp_path / "lake"))
    cdc_data.produce_events(kafka, topic, events[:first])  # the snapshot: the first micro-batch creates the table
    with StreamThread([dataset], kafka, lake, settings(tmp_path), spark_session=lambda _profile: spark) as stream:
        wait_for(lambda: sum(e.records for e in stream.events) >= first, timeout_s=180, what="the snapshot")
        cdc_data.produce_events(kafka, topic, events[first:])  # the changes of those keys: MERGEs
        wait_for(lambda: sum(e.records for e in stream.events) >= len(events), timeout_s=180, what="the changes")
        outcome = stream.stop(timeout_s=120)
    assert outcome.clean, outcome.failed
    batches = stream.events
    assert sum(e.records for e in batches) == len(events) and len(batches) >= 2
    assert table_state(lake, dataset) == expected_rows(events)
    table = lake.open_table(dataset.table_path)
    history = {entry["version"]: entry for entry in table.history()}
    streamed = {v: m for v, m in ((v, run_metadata_of(e)) for v, e in history.items()) if m and "spark_batch_id" in m}
    assert sorted(streamed) == sorted(e.version for e in batches)  # one commit per micro-batch, nothing else
    merges = [e for e in batches if history[e.version]["operation"] == "MERGE"]
    assert merges and all(e.rows_updated + e.rows_inserted + e.rows_deleted > 0 for e in merges)
    ledger = {p: table.transaction_version(app_id(dataset.name, p)) for p in range(3)}
    assert ledger == {p: max(last for e in batches for q, (_, last) in e.ranges.items() if q == p) for p in range(3)}
