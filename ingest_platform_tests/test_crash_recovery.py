"""A run killed (SIGKILL) at each point of the offset protocol loses nothing and duplicates nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.lake.ledger import app_id
from ingest_platform.lake.tables import LakeLocation
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Runs one engine run in a child process and SIGKILLs it at the named point of the protocol.
CRASHING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from ingest_platform.engines.embedded import batch_writer, engine as embedded
    from ingest_platform.kafka.client import KafkaConnection
    from ingest_platform.lake.tables import LakeLocation
    from ingest_platform_tests.helpers import json_dataset

    point, bootstrap, topic, lake_root = sys.argv[1:]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "after_delta_commit":      # Delta committed, Kafka group not yet
        embedded._Run._commit_group = die
    elif point == "before_delta_commit":   # data read and decoded, nothing committed
        batch_writer.append_with_ledger = die
    engine = embedded.EmbeddedEngine(KafkaConnection(bootstrap), LakeLocation(lake_root))
    engine.run(json_dataset(topic))
    sys.exit(3)  # not reached when the crash point is hit
    """
)


def run_and_crash(point: str, bootstrap: str, topic: str, lake_root: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, point, bootstrap, topic, lake_root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr  # killed by SIGKILL at the crash point


def group_offsets(kafka, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer(kafka.consumer_config(group))
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed}


def test_killed_after_delta_commit_then_rerun_gives_no_duplicates(kafka, kafka_broker, tmp_path, make_topic):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    lake = LakeLocation(str(tmp_path / "lake"))
    uri = lake.table_uri(dataset.table_path)
    engine = EmbeddedEngine(kafka, lake)

    produce(kafka, topic, records("orders", 300, seed=3))
    assert engine.run(dataset).records == 300
    groups_before = group_offsets(kafka, dataset.group_id, topic, 2)

    produce(kafka, topic, records("orders", 200, seed=4, start=300))
    run_and_crash("after_delta_commit", kafka_broker.bootstrap, topic, lake.root)
    # The Delta commit landed (rows and ledger), the group commit did not.
    assert read_table(uri).height == 500
    assert group_offsets(kafka, dataset.group_id, topic, 2) == groups_before

    rerun = engine.run(dataset)
    assert rerun.records == 0
    frame = read_table(uri)
    assert frame.height == 500
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == 500
    assert frame["order_id"].n_unique() == 500


def test_killed_before_delta_commit_then_rerun_loses_nothing(kafka, kafka_broker, tmp_path, make_topic):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    lake = LakeLocation(str(tmp_path / "lake"))
    uri = lake.table_uri(dataset.table_path)
    engine = EmbeddedEngine(kafka, lake)

    produce(kafka, topic, records("orders", 300, seed=5))
    engine.run(dataset)
    version = DeltaTable(uri).version()
    ledger = {p: DeltaTable(uri).transaction_version(app_id(dataset.name, p)) for p in (0, 1)}

    produce(kafka, topic, records("orders", 250, seed=6, start=300))
    run_and_crash("before_delta_commit", kafka_broker.bootstrap, topic, lake.root)
    table = DeltaTable(uri)
    assert table.version() == version
    assert {p: table.transaction_version(app_id(dataset.name, p)) for p in (0, 1)} == ledger

    rerun = engine.run(dataset)
    assert rerun.records == 250
    frame = read_table(uri)
    assert frame.height == 550
    assert frame["order_id"].n_unique() == 550
