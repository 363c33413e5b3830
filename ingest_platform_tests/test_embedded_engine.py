"""The embedded engine against the session's real broker; tables read back with polars."""

from __future__ import annotations

import json

import polars as pl
import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.ledger import app_id
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = pytest.mark.kafka


def values(items: list[dict]) -> list[tuple[bytes | None, bytes]]:
    return [(None, json.dumps(item).encode()) for item in items]


def test_n_then_nothing_then_m_more_exactly_once(kafka, lake, make_topic):
    topic = make_topic(partitions=3)
    dataset = json_dataset(topic, event_time_field="created_at", partition_by="[year, month, day, hour]")
    engine = EmbeddedEngine(kafka, lake)
    table_path = lake.table_uri(dataset.table_path)

    produce(kafka, topic, records("orders", 500, seed=1))
    first = engine.run(dataset)
    assert (first.records, first.rows_written) == (500, 500)
    frame = read_table(table_path)
    assert frame.height == 500
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == 500
    assert sorted(frame["_kafka_partition"].unique().to_list()) == [0, 1, 2]
    version_after_first = DeltaTable(table_path).version()

    second = engine.run(dataset)
    assert second.records == 0 and second.commits == []
    assert DeltaTable(table_path).version() == version_after_first  # no new commit
    assert read_table(table_path).height == 500

    produce(kafka, topic, records("orders", 300, seed=2, start=500))
    third = engine.run(dataset)
    assert third.records == 300
    frame = read_table(table_path)
    assert frame.height == 800
    assert frame.select("_kafka_partition", "_kafka_offset").n_unique() == 800
    assert frame["order_id"].n_unique() == 800


def test_ledger_is_in_the_table_and_group_offsets_follow_it(kafka, lake, make_topic):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("clicks", 200))
    report = EmbeddedEngine(kafka, lake).run(dataset)
    table = DeltaTable(lake.table_uri(dataset.table_path))
    frame = read_table(lake.table_uri(dataset.table_path))
    for partition in (0, 1):
        last = frame.filter(pl.col("_kafka_partition") == partition)["_kafka_offset"].max()
        assert table.transaction_version(app_id(dataset.name, partition)) == last
    assert {p.partition: p.last_offset for p in report.partitions} == {
        p: table.transaction_version(app_id(dataset.name, p)) for p in (0, 1)
    }
    consumer = Consumer(kafka.consumer_config(dataset.group_id))
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
    finally:
        consumer.close()
    assert {tp.partition: tp.offset for tp in committed} == {
        p: table.transaction_version(app_id(dataset.name, p)) + 1 for p in (0, 1)
    }


def test_reserved_columns_and_event_time_partitions(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic, event_time_field="at", partition_by="[year, month, day, hour]")
    produce(kafka, topic, [(b"k1", b'{"id": 1, "at": "2026-03-04T05:06:07Z"}'), (None, b'{"id": 2, "at": null}')])
    EmbeddedEngine(kafka, lake).run(dataset)
    frame = read_table(lake.table_uri(dataset.table_path)).sort("id")
    first, second = frame.to_dicts()
    assert (first["year"], first["month"], first["day"], first["hour"]) == (2026, 3, 4, 5)
    assert first["_kafka_key"] == b"k1" and second["_kafka_key"] is None
    assert first["_kafka_topic"] == topic and first["_kafka_offset"] == 0
    # Without an event time the Kafka timestamp is the event time.
    assert second["_event_time"] == second["_kafka_timestamp"]
    assert DeltaTable(lake.table_uri(dataset.table_path)).metadata().partition_columns == [
        "year", "month", "day", "hour"
    ]


def test_no_event_time_field_partitions_by_kafka_timestamp(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic, partition_by="[date]")
    produce(kafka, topic, values([{"id": i} for i in range(5)]))
    EmbeddedEngine(kafka, lake).run(dataset)
    frame = read_table(lake.table_uri(dataset.table_path))
    assert (frame["date"] == frame["_kafka_timestamp"].dt.date()).all()


def test_new_field_becomes_a_nullable_column(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic)
    engine = EmbeddedEngine(kafka, lake)
    produce(kafka, topic, values([{"id": 1, "name": "a"}]))
    engine.run(dataset)
    produce(kafka, topic, values([{"id": 2, "name": "b", "email": "b@example.com"}, {"id": 3}]))
    engine.run(dataset)
    frame = read_table(lake.table_uri(dataset.table_path)).sort("id")
    assert frame["email"].to_list() == [None, "b@example.com", None]
    assert frame["name"].to_list() == ["a", "b", None]


def test_type_conflict_fails_naming_the_field_and_commits_nothing(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic)
    engine = EmbeddedEngine(kafka, lake)
    produce(kafka, topic, values([{"id": 1, "qty": 3}]))
    engine.run(dataset)
    version = DeltaTable(lake.table_uri(dataset.table_path)).version()
    produce(kafka, topic, values([{"id": 2, "qty": "three"}]))
    with pytest.raises(Exception) as raised:
        engine.run(dataset)
    assert "'qty'" in str(raised.value)
    assert f"{topic}[0] 1..1" in str(raised.value)
    table = DeltaTable(lake.table_uri(dataset.table_path))
    assert table.version() == version
    assert table.transaction_version(app_id(dataset.name, 0)) == 0


def test_malformed_record_fails_naming_its_offset(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic)
    produce(kafka, topic, [(None, b'{"id": 1}'), (None, b'{"id": 2'), (None, b'{"id": 3}')])
    with pytest.raises(IngestError) as raised:
        EmbeddedEngine(kafka, lake).run(dataset)
    assert f"record {topic}[0] offset 1" in str(raised.value)
    assert "not valid JSON" in str(raised.value)
    assert not DeltaTable.is_deltatable(lake.table_uri(dataset.table_path))


def test_max_records_per_run_caps_each_run_and_later_runs_catch_up(kafka, lake, make_topic):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic, max_records_per_run=70)
    produce(kafka, topic, records("payments", 150))
    engine = EmbeddedEngine(kafka, lake)
    counts = [engine.run(dataset).records for _ in range(4)]
    assert counts == [70, 70, 10, 0]
    frame = read_table(lake.table_uri(dataset.table_path))
    assert frame.height == 150 and frame["payment_id"].n_unique() == 150


def test_small_batches_become_several_commits_each_with_its_offsets(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic, max_batch_bytes=20_000)
    produce(kafka, topic, records("orders", 400))
    report = EmbeddedEngine(kafka, lake).run(dataset)
    assert len(report.commits) > 1
    table = DeltaTable(lake.table_uri(dataset.table_path))
    ledger_by_version = [
        DeltaTable(lake.table_uri(dataset.table_path), version=v).transaction_version(app_id(dataset.name, 0))
        for v in report.commits
    ]
    assert ledger_by_version == sorted(ledger_by_version) and ledger_by_version[-1] == 399
    for version, last in zip(report.commits, ledger_by_version):
        rows = pl.read_delta(lake.table_uri(dataset.table_path), version=version)
        assert rows["_kafka_offset"].max() == last  # each commit's ledger matches the data it made visible
    assert table.version() == report.commits[-1]


def test_null_values_are_skipped_and_counted(kafka, lake, make_topic):
    topic = make_topic()
    dataset = json_dataset(topic)
    produce(kafka, topic, [(b"a", b'{"id": 1}'), (b"a", None), (b"b", b'{"id": 2}')])
    report = EmbeddedEngine(kafka, lake).run(dataset)
    assert (report.records, report.rows_written, report.skipped) == (3, 2, 1)
    assert DeltaTable(lake.table_uri(dataset.table_path)).transaction_version(app_id(dataset.name, 0)) == 2


def test_missing_topic_is_a_clear_error(kafka, lake):
    dataset = json_dataset("no.such.topic.anywhere")
    with pytest.raises(IngestError, match=r"dataset 'events': topic 'no.such.topic.anywhere' is not available"):
        EmbeddedEngine(kafka, lake).run(dataset)


def test_a_second_writer_that_lost_the_race_commits_nothing(kafka, lake, make_topic, monkeypatch):
    """Run A reads the ledger; run B ingests everything; A's commit must then refuse (the ledger moved)."""
    from ingest_platform.engines.embedded import batch_writer as embedded
    from ingest_platform.lake.commit import ConcurrentWriterError

    topic = make_topic(partitions=2)
    dataset = json_dataset(topic)
    produce(kafka, topic, records("orders", 200))
    original = embedded.append_with_ledger

    def b_wins_then_a_commits(location, request, table=None):
        monkeypatch.setattr(embedded, "append_with_ledger", original)
        assert EmbeddedEngine(kafka, lake).run(dataset).records == 200  # run B, start to end
        return original(location, request, table)  # run A's commit, planned before B ran

    monkeypatch.setattr(embedded, "append_with_ledger", b_wins_then_a_commits)
    with pytest.raises(ConcurrentWriterError, match="another writer is ingesting this dataset"):
        EmbeddedEngine(kafka, lake).run(dataset)
    frame = read_table(lake.table_uri(dataset.table_path))
    assert frame.height == 200 and frame["order_id"].n_unique() == 200
