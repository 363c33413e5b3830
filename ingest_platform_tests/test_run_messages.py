"""What a failed run tells its user: what it did commit before failing (docs/DESIGN.md §2)."""

from __future__ import annotations

import logging

import polars as pl
import pyarrow as pa
import pytest

from ingest_platform.dev.demo_data import produce, records
from ingest_platform.engines.embedded.engine import EmbeddedEngine
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.commit import AppendRequest, ConcurrentWriterError, append_with_ledger
from ingest_platform.lake.ledger import read_ledger
from ingest_platform_tests.helpers import json_dataset, read_table

pytestmark = pytest.mark.kafka


class _AnotherWriterAfterCommits(logging.Handler):
    """After the run's ``after``-th commit, another writer advances the ledger (an empty commit past it)."""

    def __init__(self, lake, dataset, after: int):
        super().__init__()
        self.lake, self.dataset, self.after, self.commits = lake, dataset, after, 0

    def emit(self, record: logging.LogRecord) -> None:
        if "committed version" not in record.getMessage():
            return
        self.commits += 1
        if self.commits != self.after:
            return
        table = self.lake.open_table(self.dataset.table_path)
        ledger = read_ledger(table, self.dataset.name, range(2))
        empty = pa.schema(table.schema().to_arrow()).empty_table()
        append_with_ledger(self.lake, AppendRequest(
            dataset=self.dataset.name, table_path=self.dataset.table_path, partition_by=(), rows=empty,
            covered={p: o + 1_000_000 for p, o in ledger.items()}, expected_ledger=ledger,
            run_metadata={"run_id": "intruder"}, target_file_size=1 << 27,
        ))  # fmt: skip


def test_a_run_that_loses_after_committing_says_what_it_committed(kafka, lake, make_topic):
    topic = make_topic(partitions=2)
    dataset = json_dataset(topic, max_batch_bytes=20_000)
    produce(kafka, topic, records("orders", 600))
    log = logging.getLogger("test.run_messages")
    log.setLevel(logging.INFO)
    intruder = _AnotherWriterAfterCommits(lake, dataset, after=2)
    log.addHandler(intruder)
    try:
        with pytest.raises(ConcurrentWriterError) as failure:
            EmbeddedEngine(kafka, lake, log=log).run(dataset)
    finally:
        log.removeHandler(intruder)
    message = str(failure.value)
    assert "Nothing was committed by this run" not in message
    assert "this run committed 2 version(s), which stand and are correct" in message
    uri = lake.table_uri(dataset.table_path)
    for version in (1, 2):  # the offsets each committed version holds, as an independent reader sees them
        added = pl.read_delta(uri, version=version).join(
            pl.read_delta(uri, version=version - 1), on=["_kafka_partition", "_kafka_offset"], how="anti"
        )
        ranges = added.group_by("_kafka_partition").agg(
            pl.col("_kafka_offset").min().alias("first"), pl.col("_kafka_offset").max().alias("last")
        )
        described = ", ".join(f"{topic}[{p}] {first}..{last}" for p, first, last in sorted(ranges.iter_rows()))
        assert added.height > 0 and f"version {version}: {described}" in message, message
    committed = read_table(uri)
    assert committed.height > 0 and committed.select("_kafka_partition", "_kafka_offset").n_unique() == committed.height


def test_max_dlq_ratio_is_judged_over_the_run_not_per_batch(kafka, lake, make_topic):
    """1 % bad records overall, all of them early: the first batches hold ~10 % each. Allowed 1 % over the
    run, the run passes and dead-letters them all; allowed 0.5 %, it fails where the budget is exceeded."""
    import json

    topic = make_topic(partitions=1)
    values = [(None, json.dumps({"id": i, "pad": "x" * 150}).encode()) for i in range(1000)]
    for i in range(0, 100, 10):
        values[i] = (None, b"{not json")  # 10 bad records among the first 100
    produce(kafka, topic, values)
    report = EmbeddedEngine(kafka, lake).run(json_dataset(topic, name="lenient", max_dlq_ratio=0.01,
                                                          max_batch_bytes=16_000))  # fmt: skip
    assert report.dead_lettered == 10 and report.applied == 990 and len(report.commits) > 5
    strict = json_dataset(topic, name="strict", max_dlq_ratio=0.005, max_batch_bytes=4_000)
    with pytest.raises(IngestError) as failure:
        EmbeddedEngine(kafka, lake).run(strict)
    message = str(failure.value)
    assert "of the 1000 records of this run" in message and "max_dlq_ratio 0.005 allows 5 over the run" in message
    assert "Nothing was committed for this batch" in message and "this run committed" in message
