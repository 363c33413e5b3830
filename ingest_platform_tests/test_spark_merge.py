"""The Spark engine's upsert commit (docs/DESIGN.md §9.2): a copy-on-write MERGE through delta-spark's transaction
API, ONE commit per run carrying every Kafka partition's txn, only the files holding a batch key rewritten, and a
concurrent writer losing nothing."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from ingest_platform.dev import cdc_data
from ingest_platform.engines.spark import merge as spark_merge
from ingest_platform.engines.spark.engine import SparkEngine
from ingest_platform.lake.commit import ConcurrentWriterError, run_metadata_of
from ingest_platform.lake.ledger import app_id
from ingest_platform_tests.cdc_helpers import cdc_dataset, expected_rows, reconciles, table_state

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.slow]


def file_keys(table: DeltaTable) -> dict[str, set[int]]:
    """Data file (relative path) -> the ids it holds."""
    import pyarrow.parquet as pq

    root = table.table_uri.removeprefix("file://")
    return {add["path"]: set(pq.read_table(f"{root}/{add['path']}", columns=["id"])["id"].to_pylist())
            for add in pa.table(table.get_add_actions(flatten=True)).to_pylist()}  # fmt: skip


def test_one_commit_carries_every_partitions_txn_and_rewrites_only_touched_files(kafka, make_topic, lake, spark):
    topic = make_topic(12)
    dataset = cdc_dataset(topic)
    engine = SparkEngine(kafka, lake, spark)
    plan = [("r", i) for i in range(1, 91)] + [("u", 75), ("u", 80), ("d", 85), ("c", 91), ("u", 91)]
    events = cdc_data.mysql_events(plan, topic=topic)
    cdc_data.produce_events(kafka, topic, events[:60])  # ids 1..60: the first run creates the table (one file)
    assert len(engine.run(dataset).commits) == 1
    cdc_data.produce_events(kafka, topic, events[60:90])  # ids 61..90: nothing matches, no file is rewritten
    second = engine.run(dataset)
    assert len(second.commits) == 1 and second.rows_inserted == 30 and second.rows_updated == 0
    before = file_keys(lake.open_table(dataset.table_path))
    assert len(before) == 2
    cdc_data.produce_events(kafka, topic, events[90:])  # changes of ids 75, 80, 85 (second file) and a new 91

    report = engine.run(dataset)

    assert len(report.commits) == 1 and reconciles(report)
    assert (report.rows_updated, report.rows_deleted, report.rows_inserted) == (2, 1, 1)  # 91: created + updated
    assert table_state(lake, dataset) == expected_rows(events)
    table = lake.open_table(dataset.table_path)
    (entry,) = table.history(1)
    assert entry["operation"] == "MERGE" and run_metadata_of(entry)["records"] == report.records
    metrics = {name: int(value) for name, value in entry["operationMetrics"].items()}
    assert (metrics["numTargetRowsUpdated"], metrics["numTargetRowsDeleted"], metrics["numTargetRowsInserted"]) == (
        2, 1, 1)  # fmt: skip
    touched = {path for path, ids in before.items() if ids & {75, 80, 85}}
    after = file_keys(table)
    assert metrics["numTargetFilesRemoved"] == len(touched) == 1
    assert set(before) - touched <= set(after) and not touched & set(after)  # the untouched file stays as it was
    for progress in report.partitions:  # every partition's txn, in that one commit
        if progress.records:
            assert table.transaction_version(app_id(dataset.name, progress.partition)) == progress.last_offset
    assert sum(1 for p in report.partitions if p.records) > 1
    assert engine.run(dataset).commits == []


def test_a_concurrent_commit_fails_the_merge_and_nothing_is_lost(kafka, make_topic, lake, spark, monkeypatch):
    topic = make_topic(2)
    dataset = cdc_dataset(topic)
    engine = SparkEngine(kafka, lake, spark)
    events = cdc_data.mysql_events(cdc_data.scenario(keys=20, changes=40, seed=21), topic=topic)
    cdc_data.produce_events(kafka, topic, events[:25])
    engine.run(dataset)
    uri = lake.table_uri(dataset.table_path)
    ledger = {p: DeltaTable(uri).transaction_version(app_id(dataset.name, p)) for p in range(2)}
    cdc_data.produce_events(kafka, topic, events[25:])
    original = spark_merge.merged_rows

    def with_a_concurrent_append(*args, **kwargs):  # another writer commits while the MERGE is being computed
        row = DeltaTable(uri).to_pyarrow_table().slice(0, 1)
        row = row.set_column(row.schema.get_field_index("id"), "id", pa.array([999_999], row.schema.field("id").type))
        write_deltalake(uri, row, mode="append")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(spark_merge, "merged_rows", with_a_concurrent_append)
        with pytest.raises(ConcurrentWriterError, match="dataset .users.: the commit .* lost to a concurrent writer"):
            engine.run(dataset)
    assert {p: DeltaTable(uri).transaction_version(app_id(dataset.name, p)) for p in range(2)} == ledger
    report = engine.run(dataset)
    assert len(report.commits) == 1 and reconciles(report)
    state = table_state(lake, dataset)
    assert state.pop(999_999) and state == expected_rows(events)  # the other writer's row, and every change once


def test_write_batch_appends_a_frame_with_every_partitions_txn_in_one_commit(spark, tmp_path):
    """``transaction.write_batch``: the commit a foreachBatch writer makes per micro-batch."""
    from ingest_platform.engines.spark.transaction import LedgerMovedError, write_batch

    path = str(tmp_path / "t")
    spark.createDataFrame([(0, 0)], "p int, o long").write.format("delta").save(path)
    batch = spark.createDataFrame([(0, 1), (0, 2), (1, 0)], "p int, o long")
    version = write_batch(spark, path, batch, {"t-0": 2, "t-1": 0}, {"t-0": -1, "t-1": -1}, {"records": 3}, "test")
    table = DeltaTable(path)
    assert version == table.version() == 1
    assert (table.transaction_version("t-0"), table.transaction_version("t-1")) == (2, 0)
    assert run_metadata_of(table.history(1)[0])["records"] == 3 and table.to_pyarrow_table().num_rows == 4
    with pytest.raises(LedgerMovedError, match="test: the ledger .* moved from -1 to 2 for t-0"):
        write_batch(spark, path, batch, {"t-0": 5}, {"t-0": -1}, {}, "test")  # a stale expectation
    assert DeltaTable(path).version() == 1
