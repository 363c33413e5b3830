"""The Spark engine on the session's multi-process standalone cluster when a worker dies in the middle of a run:
the run completes on the other worker or fails cleanly, and the table ends exact (nothing lost or duplicated)."""

from __future__ import annotations

import threading
import time

import pytest
from deltalake import DeltaTable

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.engines.spark.engine import SparkEngine
from ingest_platform.lake.ledger import app_id
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.slow]

RECORDS = 40_000  # enough for the write to take seconds on two one-core executors


def wait_for_running_tasks(spark, timeout_s: float = 120) -> bool:
    """True once a stage of a job has tasks running on the executors."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for stage in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage)
            if info is not None and info.numActiveTasks > 0:
                return True
        time.sleep(0.05)
    return False


def wait_for_executors(spark, count: int, timeout_s: float = 120) -> None:
    tracker = spark.sparkContext._jsc.sc().statusTracker()
    deadline = time.monotonic() + timeout_s
    while len(tracker.getExecutorInfos()) - 1 < count:  # the driver is listed too
        assert time.monotonic() < deadline, f"the application did not get {count} executors back"
        time.sleep(0.5)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(kafka, lake, make_topic, spark, spark_cluster):
    topic = make_topic(partitions=4)
    dataset = json_dataset(topic, name="survivor")
    produce(kafka, topic, records("orders", 200, seed=1))
    engine = SparkEngine(kafka, lake, spark)
    assert engine.run(dataset).records == 200  # the table and its schema exist: the next run is one write job
    produce(kafka, topic, records("orders", RECORDS, seed=2, start=200))
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = engine.run(dataset)
        except Exception as error:  # noqa: BLE001 - judged below
            outcome["error"] = error

    runner = threading.Thread(target=run, name="spark-run")
    try:
        runner.start()
        assert wait_for_running_tasks(spark), "the run never started a Spark task"
        killed = spark_cluster.executor_pids(0)
        spark_cluster.kill_worker(0)  # the worker and its executors, at once (SIGKILL)
        assert killed, "worker 0 ran no executor of this application"
        assert runner.is_alive(), "the run ended before the worker was killed: nothing was tested"
        runner.join(timeout=420)
        assert not runner.is_alive(), "the run did not end after losing a worker"
    finally:
        spark_cluster.start_worker(0)
        spark_cluster.wait_for_workers(2)
    table_path = lake.table_uri(dataset.table_path)
    if "error" in outcome:  # failed cleanly: a message, and nothing of the batch committed
        error = outcome["error"]
        assert isinstance(error, IngestError), repr(error)
        assert "dataset 'survivor'" in str(error) and "Nothing was committed" in str(error)
        assert read_table(table_path).height == 200
        wait_for_executors(spark, 1)
        assert engine.run(dataset).records == RECORDS  # the next run re-reads the same offsets
    else:
        assert outcome["report"].records == RECORDS
    assert engine.run(dataset).records == 0  # caught up
    frame = read_table(table_path)
    assert frame.height == RECORDS + 200
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == RECORDS + 200
    assert frame["order_id"].n_unique() == RECORDS + 200
    table = DeltaTable(table_path)
    for partition in range(4):
        offsets = frame.filter(frame["_kafka_partition"] == partition)["_kafka_offset"]
        assert table.transaction_version(app_id(dataset.name, partition)) == offsets.max()
        assert offsets.min() == 0 and offsets.len() == offsets.max() + 1  # no gap
