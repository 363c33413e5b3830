"""Step 1–4 of a run (docs/DESIGN.md §2), shared by every engine: ledger, watermarks, capped ranges."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from confluent_kafka import Consumer
from deltalake import DeltaTable

from ingest_platform.catalog import Dataset
from ingest_platform.engines.offset_ranges import PartitionRange, plan_ranges, start_offsets
from ingest_platform.kafka.client import KafkaReadError, topic_partitions, watermarks
from ingest_platform.lake.ledger import read_ledger
from ingest_platform.lake.tables import LakeLocation


class IngestError(RuntimeError):
    """A run failed; the message names the dataset and what to do. Nothing was committed for the failed batch."""


@dataclass
class RunPlan:
    ranges: list[PartitionRange]
    ledger: dict[int, int]  # partition -> last offset the table holds, at run start
    table: DeltaTable | None  # the table's snapshot at run start (None: no table yet)
    lag_after: int  # records left for later runs by max_records_per_run
    #: partition -> (first, last) offsets lost to retention and skipped (``on_data_loss: skip``); recorded in
    #: the run metadata of the first commit that advances the partition.
    data_loss: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(r.count for r in self.ranges)

    @property
    def table_schema(self) -> pa.Schema | None:
        return pa.schema(self.table.schema().to_arrow()) if self.table is not None else None

    @property
    def accepted(self) -> dict[int, int]:
        """Positions this run takes without reading records (partition -> start - 1), recorded in the ledger by
        its first commit (docs/DESIGN.md §2): on a table without a ledger, where each partition begins (its
        earliest offset, so that a later run does not count the records before it as lost); with
        ``on_data_loss: skip``, the end of each skipped retention gap."""
        return {
            r.partition: r.start - 1
            for r in self.ranges
            if r.start - 1 > self.ledger.get(r.partition, -1) and (not self.ledger or r.partition in self.data_loss)
        }

    def data_loss_metadata(self, partitions) -> dict[str, list[int]]:
        """``{"<p>": [first lost, last lost]}`` for the given partitions that skipped a retention gap."""
        return {str(p): list(self.data_loss[p]) for p in sorted(partitions) if p in self.data_loss}

    def describe_data_loss(self, topic: str) -> str:
        return "; ".join(
            f"{topic}[{p}] offsets {first}..{last} ({last - first + 1} records)"
            for p, (first, last) in sorted(self.data_loss.items())
        )

    def describe(self, topic: str) -> str:
        return ", ".join(f"{topic}[{r.partition}] {r.start}..{r.end - 1}" for r in self.ranges if r.count)


def plan_run(dataset: Dataset, consumer: Consumer, lake: LakeLocation, timeout_s: float) -> RunPlan:
    """The ledger from the table, the watermarks from Kafka (captured now, once) and the capped ranges."""
    try:
        partitions = topic_partitions(consumer, dataset.topic, timeout_s)
        marks = watermarks(consumer, dataset.topic, partitions, timeout_s)
    except KafkaReadError as error:
        raise IngestError(f"dataset '{dataset.name}': {error}") from None
    table = lake.open_table(dataset.table_path)
    ledger = read_ledger(table, dataset.name, partitions)
    data_loss: dict[int, tuple[int, int]] = {}
    starts = start_offsets(dataset.name, dataset.topic, ledger, marks, dataset.on_data_loss, data_loss)
    ranges = plan_ranges(starts, {p: high for p, (_, high) in marks.items()}, dataset.max_records_per_run)
    return RunPlan(
        ranges=ranges,
        ledger=ledger,
        table=table,
        lag_after=sum(marks[r.partition][1] - r.end for r in ranges),
        data_loss=data_loss,
    )
