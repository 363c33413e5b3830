"""One Structured Streaming micro-batch -> one Delta commit on the offset protocol (docs/DESIGN.md §10.10).

``commit_micro_batch`` is what the stream's ``foreachBatch`` calls with Spark's micro-batch of Kafka rows. It
never trusts Spark's positions or batch ids: it reads the ledger from the table, keeps only the records above
it (``offset > ledger[p]``: a replayed batch, a checkpoint behind the table or a batch run that got there
first commit nothing twice), and writes what is left through the Spark engine's run (``engine._SparkRun``:
decoding, schema evolution, dead letters, append or MERGE) as ONE commit with one ``txn`` per partition: the
batch's last offset on it. The transaction re-checks the ledger it read and registers those app ids as read,
so a writer that commits in between makes this commit fail; the batch is then filtered again and retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ingest_platform.catalog import Dataset
from ingest_platform.engines.offset_ranges import PartitionRange
from ingest_platform.engines.report import RunReport
from ingest_platform.engines.run_plan import RunPlan
from ingest_platform.engines.spark.engine import ENGINE_NAME, SparkEngine, _SparkRun
from ingest_platform.lake.commit import ConcurrentWriterError
from ingest_platform.lake.ledger import read_ledger

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

#: Attempts of one micro-batch against writers that commit the same partitions in between (each re-reads the
#: ledger and filters again); beyond them the batch fails and the stream restarts its query from the ledger.
CONFLICT_ATTEMPTS = 3


class LedgerRewoundError(RuntimeError):
    """The table's ledger is below what this stream saw committed (the table was restored, replaced or
    deleted): Spark's positions cannot be trusted; the stream restarts its query from the ledger."""


@dataclass(frozen=True)
class MicroBatchCommit:
    """What one micro-batch committed (``report``: the run figures of that one commit)."""

    report: RunReport
    version: int
    ranges: dict[int, tuple[int, int]]  # partition -> (first, last) offset committed
    timestamps_ms: list[int]  # Kafka timestamps of the committed records (one per record, ±5 ms), latencies
    committed_at: datetime


def above_ledger(ledger: Mapping[int, int]) -> Column:
    """Rows whose offset is above the ledger of their partition (every row of a partition not in it)."""
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for partition, last in sorted(ledger.items()):
        condition = F.when(F.col("partition") == partition, F.col("offset") > last).otherwise(condition)
    return condition


def commit_micro_batch(
    engine: SparkEngine,
    dataset: Dataset,
    batch: DataFrame,
    metadata: Mapping[str, object],
    seen: dict[int, int],
    partitions: list[int],
    data_loss: dict[int, tuple[int, int]] | None = None,
) -> MicroBatchCommit | None:
    """Commit the records of ``batch`` (Spark's Kafka rows) that the table does not hold yet; None when it holds
    them all. ``partitions``: the topic's partitions as last known (one Spark discovers beyond them costs one more
    small job). ``seen`` (partition -> last offset this stream committed or found) is checked against the table
    (``LedgerRewoundError`` when the table went back) and updated. ``metadata`` joins the commit's run metadata;
    ``data_loss`` (partition -> range skipped by ``on_data_loss: skip``) is recorded in the first commit that moves
    past it, and removed from the mapping then."""
    from pyspark import StorageLevel

    batch = batch.persist(StorageLevel.MEMORY_AND_DISK)  # read from Kafka once: the figures, then the write
    try:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return _commit_once(engine, dataset, batch, metadata, seen, partitions, data_loss or {})
            except ConcurrentWriterError:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                engine.log.warning(f"{dataset.name}: another writer committed offsets of this micro-batch first; "
                                   "re-reading the ledger and committing the rest")  # fmt: skip
        return None  # unreachable
    finally:
        batch.unpersist()


#: Kafka timestamps are gathered per this many milliseconds (one small aggregate per batch, not one per record).
TICK_MS = 10


def _spans(batch: DataFrame, ledger: Mapping[int, int]) -> list:
    """One job over the batch above ``ledger``: per partition and timestamp tick, first and last offset, count."""
    from pyspark.sql import functions as F

    tick = F.floor(F.unix_millis("timestamp") / TICK_MS).alias("tick")
    return (
        batch.where(above_ledger(ledger))
        .groupBy("partition", tick)
        .agg(F.min("offset").alias("first"), F.max("offset").alias("last"), F.count(F.lit(1)).alias("n"))
        .collect()
    )


def _commit_once(engine: SparkEngine, dataset: Dataset, batch: DataFrame, metadata: Mapping[str, object],
                 seen: dict[int, int], partitions: list[int],
                 data_loss: dict[int, tuple[int, int]]) -> MicroBatchCommit | None:  # fmt: skip
    table = engine.lake.open_table(dataset.table_path)
    ledger = read_ledger(table, dataset.name, partitions)
    rows = _spans(batch, ledger)
    unknown = {int(row["partition"]) for row in rows} - set(partitions)
    if unknown:  # partitions added to the topic: their ledger too (a batch run may have ingested them)
        ledger.update(read_ledger(table, dataset.name, unknown))
        partitions.extend(sorted(unknown))
        if any(p in ledger for p in unknown):
            rows = _spans(batch, ledger)
    rewound = {p: (last, ledger.get(p)) for p, last in seen.items() if ledger.get(p, -1) < last}
    if rewound:
        described = ", ".join(f"[{p}] {last} -> {now if now is not None else 'none'}"
                              for p, (last, now) in sorted(rewound.items()))  # fmt: skip
        raise LedgerRewoundError(
            f"dataset '{dataset.name}': the ledger of {engine.lake.table_uri(dataset.table_path)} went back "
            f"({described}): the table was restored, replaced or deleted. The stream restarts from the table's ledger."
        )
    seen.update(ledger)
    if not rows:
        return None  # a replayed batch, or a batch run got there first: nothing to commit
    ranges: dict[int, tuple[int, int]] = {}
    timestamps: list[int] = []
    for row in rows:
        partition, first, last = int(row["partition"]), int(row["first"]), int(row["last"])
        low, high = ranges.get(partition, (first, last))
        ranges[partition] = (min(low, first), max(high, last))
        if row["tick"] is not None:
            timestamps.extend([int(row["tick"]) * TICK_MS + TICK_MS // 2] * int(row["n"]))
    plan = RunPlan(
        ranges=[PartitionRange(p, first, last + 1) for p, (first, last) in sorted(ranges.items())],
        ledger=ledger,
        table=table,
        lag_after=0,
        data_loss={p: lost for p, lost in data_loss.items() if p in ranges},
    )
    fresh = batch.where(above_ledger(ledger))
    uri = engine.lake.table_uri(dataset.table_path)
    report = RunReport(dataset=dataset.name, engine=ENGINE_NAME, table_uri=uri)
    run_id = str(metadata.get("run_id") or uuid.uuid4().hex)
    _SparkRun(engine, dataset, plan, report, run_id, source=fresh, extra_metadata=dict(metadata)).execute()
    if not report.commits:
        return None
    seen.update({p: last for p, (_, last) in ranges.items()})
    for partition in ranges:
        data_loss.pop(partition, None)
    return MicroBatchCommit(report, report.commits[-1], ranges, timestamps, datetime.now(timezone.utc))
