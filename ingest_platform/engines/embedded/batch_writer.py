"""One batch of Kafka records -> one Delta commit with the ledger: the path runs and streams share.

docs/DESIGN.md §2 step 5 and §9: the batch's dead letters first (their own ledger), then its rows appended
(or, for upserts, its last change per key MERGEd) in one commit that carries the ``txn`` action of every
partition the batch advances, the ledger compared first. The embedded engine's run (``engine.py``) and the
stream process (``ingest_platform/streaming/``) hand their batches to the same ``BatchWriter``, so a run and a
stream commit a batch through the same code; each applies the returned ``BatchCommit`` to its own figures.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from ingest_platform.catalog import Dataset
from ingest_platform.engines.changes import (
    CDC_OP,
    DELETE_OP,
    last_change_per_key,
    merge_clauses,
    order_column,
    quote_datafusion,
    with_table_columns,
)
from ingest_platform.engines.embedded.batch_rows import ENGINE_COLUMN_TYPES, KafkaRecords, to_rows
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.commit import AppendRequest, append_with_ledger, merge_with_ledger
from ingest_platform.lake.dead_letters import write_dead_letters
from ingest_platform.lake.tables import LakeLocation, commit_stats

#: Preferred data-file size (the guide's 256 MB Parquet block), clamped to the dataset's file-size target.
PREFERRED_FILE_MB = 256


@dataclass
class RecordBatch:
    """Records buffered for the next Delta commit."""

    values: list[bytes] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    nbytes: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) of null values
    finished: dict[int, int] = field(default_factory=dict)  # partition -> end - 1, for ranges read to the end

    @property
    def records(self) -> int:
        return len(self.offsets) + len(self.skipped)

    def kafka_records(self, topic: str) -> KafkaRecords:
        return KafkaRecords(topic, self.values, self.partitions, self.offsets, self.timestamps, self.keys)

    def progress(self) -> dict[int, tuple[int, int]]:
        """Per partition: (last offset covered, records consumed) by this batch."""
        result: dict[int, tuple[int, int]] = {}
        if self.offsets:
            grouped = (
                pa.table({"p": self.partitions, "o": self.offsets})
                .group_by("p")
                .aggregate([("o", "max"), ("o", "count")])
            )
            for p, last, count in zip(*(grouped[c].to_pylist() for c in ("p", "o_max", "o_count"))):
                result[p] = (last, count)
        for p, offset in self.skipped:
            last, count = result.get(p, (-1, 0))
            result[p] = (max(last, offset), count + 1)
        for p, end in self.finished.items():
            last, count = result.get(p, (-1, 0))
            result[p] = (max(last, end), count)
        return result


@dataclass
class BatchCommit:
    """What handing one batch to ``BatchWriter.commit`` did. ``version`` None: nothing was written."""

    records: int  # Kafka records of the batch (applied + dead-lettered + skipped)
    skipped: int
    progress: dict[int, tuple[int, int]]  # partition -> (last offset covered, records), as RecordBatch.progress
    advancing: dict[int, int] = field(default_factory=dict)  # partition -> new ledger entry
    version: int | None = None
    applied: int = 0
    rows_written: int = 0
    dead_lettered: int = 0
    dlq_version: int | None = None
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    bytes_read: int = 0
    files_written: int = 0
    bytes_written: int = 0
    committed_at: datetime | None = None
    oldest_event_time: datetime | None = None


class DeadLetterWindow:
    """``max_dlq_ratio`` over the last ``records`` records instead of one batch (streams, docs/DESIGN.md §10.3).

    A stream's micro-batches can be a handful of records: one bad record in five is 20 %. Its ratio is
    judged over a sliding window of the last commits, and over at least ``minimum`` records (a short history
    counts as if the rest were good), so a few early bad records do not stop a stream allowed 1 %.
    """

    def __init__(self, records: int = 10_000, minimum: int = 1_000):
        self.records = records
        self.minimum = minimum
        self._commits: deque[tuple[int, int]] = deque()  # (records, bad) per commit, oldest first
        self._records = self._bad = 0

    def ratio(self, bad: int, records: int) -> float:
        return (self._bad + bad) / max(self._records + records, self.minimum)

    def describe(self) -> str:
        return f"over the last {self._records:,} records and this batch (at least {self.minimum:,})"

    def add(self, records: int, bad: int) -> None:
        self._commits.append((records, bad))
        self._records += records
        self._bad += bad
        while self._commits and self._records - self._commits[0][0] >= self.records:
            old_records, old_bad = self._commits.popleft()
            self._records -= old_records
            self._bad -= old_bad


class BatchWriter:
    """Writes the batches of one dataset, in order, each as one Delta commit that advances the ledger.

    Holds what the next commit needs: the ledger the table must still show (compared before each commit,
    so a concurrent writer fails ours), the table's schema, the retention gaps skipped but not yet
    recorded, and the first offset read per partition (the start of each commit's recorded ranges).
    """

    def __init__(
        self,
        dataset: Dataset,
        lake: LakeLocation,
        run_id: str,
        engine: str,
        started_at: float,
        ledger: dict[int, int],
        table_schema: pa.Schema | None,
        first_offsets: dict[int, int],
        data_loss: dict[int, tuple[int, int]] | None = None,
        log: logging.Logger | None = None,
        dlq_window: DeadLetterWindow | None = None,
    ):
        self.dataset = dataset
        self.lake = lake
        self.run_id = run_id
        self.engine = engine
        self.started_at = started_at
        self.ledger = ledger
        self.table_schema = table_schema
        self.first_offsets = first_offsets
        self.data_loss = data_loss if data_loss is not None else {}
        self.log = log or logging.getLogger(__name__)
        self.dlq_window = dlq_window  # None: max_dlq_ratio is judged per batch
        self.uri = lake.table_uri(dataset.table_path)
        self.table: DeltaTable | None = None  # a handle kept between commits (opened after the first one)
        min_mb, max_mb = dataset.slo.file_size_mb.min, dataset.slo.file_size_mb.max
        self.target_file_size = int(min(max_mb, max(min_mb, PREFERRED_FILE_MB)) * 1024 * 1024)

    def commit(self, batch: RecordBatch, extra_metadata: dict[str, object] | None = None) -> BatchCommit:
        """The batch's dead letters (if any), then its Delta commit. The caller commits to the consumer group."""
        dataset = self.dataset
        progress = batch.progress()
        advancing = {p: last for p, (last, _) in progress.items() if last > self.ledger.get(p, -1)}
        consumed = batch.records
        result = BatchCommit(records=consumed, skipped=len(batch.skipped), progress=progress)
        if not advancing or not batch.values:
            # Nothing to write. Offsets that carried no row are re-read next run (harmless: they hold no data).
            return result
        decoded = to_rows(dataset, batch.kafka_records(dataset.topic), self.table_schema)
        rows = decoded.rows
        metadata = {
            "run_id": self.run_id,
            "engine": self.engine,
            "topic": dataset.topic,
            "records": consumed,
            "applied": rows.num_rows,
            "dead_lettered": len(decoded.bad),
            "skipped": len(batch.skipped),
            "tombstones": len(batch.skipped),  # null values; for Debezium, the deletes' compaction markers
            "started_at": round(self.started_at, 3),
            "ranges": {
                str(p): [max(self.ledger.get(p, -1) + 1, self.first_offsets[p]), o] for p, o in advancing.items()
            },
            **self._data_loss_metadata(advancing),
            **(extra_metadata or {}),
        }
        if dataset.mode == "upsert":
            metadata["key"] = list(decoded.key)
        if decoded.bad:
            result.dlq_version = self._dead_letter(decoded.bad, consumed, advancing, metadata)
            result.dead_lettered = len(decoded.bad)
        if rows.num_rows == 0:
            rows = self._empty_rows()  # every record dead-lettered: the ledger still moves past them
        request = AppendRequest(
            dataset=dataset.name,
            table_path=dataset.table_path,
            partition_by=dataset.partition_by,
            rows=rows,
            covered=advancing,
            expected_ledger=self.ledger,
            run_metadata=metadata,
            target_file_size=self.target_file_size,
            description=dataset.description,
        )
        if dataset.mode == "upsert":
            version, rows = self._upsert(request, decoded.key, result)
        else:
            version = append_with_ledger(self.lake, request, self.table)
        result.committed_at = datetime.now(timezone.utc)
        if self.table is None:
            self.table = self.lake.open_table(dataset.table_path)
        if self.dlq_window is not None:
            self.dlq_window.add(consumed, len(decoded.bad))
        self.ledger.update(advancing)
        for partition in advancing:
            self.data_loss.pop(partition, None)
        self.table_schema = pa.unify_schemas([self.table_schema, rows.schema]) if self.table_schema else rows.schema
        stats = commit_stats(self.uri, version, self.lake.storage_options)
        result.advancing = advancing
        result.version = version
        result.applied = decoded.rows.num_rows
        result.rows_written = rows.num_rows
        result.bytes_read = batch.nbytes
        result.files_written = stats.files
        result.bytes_written = stats.bytes
        result.oldest_event_time = pc.min(decoded.rows["_event_time"]).as_py() if decoded.rows.num_rows else None
        self.log.info(
            f"{dataset.name}: committed version {version}: {rows.num_rows} rows, {stats.files} files, "
            f"{len(decoded.bad)} dead-lettered, ledger {dict(sorted(advancing.items()))}"
        )
        return result

    def _dead_letter(self, bad: list, consumed: int, advancing: dict[int, int], metadata: dict) -> int | None:
        """Within ``max_dlq_ratio``: into ``<name>_dlq`` first (its own ledger); above it: fail, commit nothing."""
        dataset = self.dataset
        window = self.dlq_window
        ratio = len(bad) / consumed if window is None else window.ratio(len(bad), consumed)
        if ratio > dataset.max_dlq_ratio:
            first = "; ".join(f"record {dataset.topic}[{r.partition}] offset {r.offset}: {r.error}" for r in bad[:3])
            allowed = (
                f"max_dlq_ratio is {dataset.max_dlq_ratio:g}"
                if dataset.max_dlq_ratio
                else "max_dlq_ratio is 0: dead-lettering is off"
            )
            share = f"({ratio:.1%}{' ' + window.describe() if window is not None else ''})"
            raise IngestError(
                f"dataset '{dataset.name}': {len(bad)} of {consumed} records {share} cannot be applied, and "
                f"{allowed}. First: {first}. Fix the producer, or raise max_dlq_ratio in the catalog to send such "
                "records to the dead-letter table. Nothing was committed for this batch."
            )
        version, added = write_dead_letters(self.lake, dataset, bad, advancing, metadata)
        self.log.warning(
            f"{dataset.name}: {len(bad)} records dead-lettered to {dataset.dlq_table_path} ({added} new); "
            f"first: {dataset.topic}[{bad[0].partition}] offset {bad[0].offset}: {bad[0].error}"
        )
        return version

    def _upsert(self, request: AppendRequest, key: tuple[str, ...], result: BatchCommit) -> tuple[int, pa.Table]:
        """The batch's last change per key, MERGEd (or, for a new table, appended) with the ledger advance."""
        dataset = self.dataset
        changes = last_change_per_key(request.rows, key, order_column(dataset))
        if self.table_schema is None:
            if dataset.format == "debezium" and dataset.delete_mode == "hard" and changes.num_rows:
                changes = changes.filter(pc.not_equal(changes[CDC_OP], DELETE_OP))
            version = append_with_ledger(self.lake, replace(request, rows=changes), self.table)
            result.rows_inserted += changes.num_rows
            return version, changes
        changes = with_table_columns(changes, self.table_schema)
        clauses = merge_clauses(dataset, key, changes.column_names, quote_datafusion)
        version, metrics = merge_with_ledger(self.lake, replace(request, rows=changes), clauses, self.table)
        result.rows_inserted += int(metrics.get("num_target_rows_inserted", 0))
        result.rows_updated += int(metrics.get("num_target_rows_updated", 0))
        result.rows_deleted += int(metrics.get("num_target_rows_deleted", 0))
        return version, changes

    def _empty_rows(self) -> pa.Table:
        if self.table_schema is not None:
            return self.table_schema.empty_table()
        return pa.schema([(name, kind) for name, kind in ENGINE_COLUMN_TYPES.items()]).empty_table()

    def _data_loss_metadata(self, advancing: dict[int, int]) -> dict[str, object]:
        """``data_loss: {"<p>": [first lost, last lost]}`` for skipped gaps this commit moves past."""
        lost = {str(p): list(self.data_loss[p]) for p in sorted(advancing) if p in self.data_loss}
        return {"data_loss": lost} if lost else {}
