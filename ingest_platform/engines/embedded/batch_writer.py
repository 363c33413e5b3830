"""One batch of Kafka records -> one Delta commit with the ledger: the path runs and streams share.

docs/DESIGN.md §2 step 5 and §9: the batch's dead letters first (their own ledger), then its rows appended
(or, for upserts, its last change per key MERGEd) in one commit that carries the ``txn`` action of every
partition the batch advances, the ledger compared first. The embedded engine's run (``engine.py``) and the
stream process (``ingest_platform/streaming/``) hand their batches to the same ``BatchWriter``, so a run and a
stream commit a batch through the same code; each applies the returned ``BatchCommit`` to its own figures.
"""

from __future__ import annotations

import logging
from array import array
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
from ingest_platform.engines.embedded.batch_rows import ENGINE_COLUMN_TYPES, BatchRows, KafkaRecords, to_rows
from ingest_platform.engines.embedded.record_values import RecordValues, int_array
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.commit import AppendRequest, append_with_ledger, merge_with_ledger
from ingest_platform.lake.dead_letters import write_dead_letters
from ingest_platform.lake.tables import LakeLocation, commit_stats

#: Preferred data-file size (the guide's 256 MB Parquet block), clamped to the dataset's file-size target.
PREFERRED_FILE_MB = 256


@dataclass
class RecordBatch:
    """Records buffered for the next Delta commit: values in one buffer, numbers in ``array``s, so a batch
    costs its bytes and a few bytes per record (docs/DESIGN.md §2 "Memory")."""

    values: RecordValues = field(default_factory=RecordValues)
    partitions: array = field(default_factory=lambda: array("i"))
    offsets: array = field(default_factory=lambda: array("q"))
    timestamps: array = field(default_factory=lambda: array("q"))
    keys: list[bytes | None] = field(default_factory=list)
    nbytes: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) of null values
    finished: dict[int, int] = field(default_factory=dict)  # partition -> end - 1, for ranges read to the end
    # The rows once decoded (the raw values are released as they are decoded): a commit retried after a
    # failure (the stream retries while the lake fails) writes these again. Dropped once committed.
    decoded: BatchRows | None = field(default=None, repr=False)

    @property
    def records(self) -> int:
        return len(self.offsets) + len(self.skipped)

    def kafka_records(self, topic: str) -> KafkaRecords:
        return KafkaRecords(topic, self.values, self.partitions, self.offsets, self.timestamps, self.keys)

    def release_records(self) -> None:
        """Drop the raw values and keys once decoded: the batch's rows are written without them (one batch less
        in memory). The numbers stay (a few bytes per record; a stream's latency reads the timestamps)."""
        self.values, self.keys = RecordValues(), []

    def progress(self) -> dict[int, tuple[int, int]]:
        """Per partition: (last offset covered, records consumed) by this batch."""
        result: dict[int, tuple[int, int]] = {}
        if self.offsets:
            grouped = (
                pa.table({"p": int_array(self.partitions, pa.int32()), "o": int_array(self.offsets, pa.int64())})
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
    ranges: dict[str, list[int]] = field(default_factory=dict)  # "<partition>" -> [first, last] it covered
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

    def judge(self, bad: int, records: int, max_ratio: float) -> str | None:
        """None when the batch's ``bad`` of ``records`` keep the window within ``max_ratio``; else the why."""
        ratio = (self._bad + bad) / max(self._records + records, self.minimum)
        if ratio <= max_ratio:
            return None
        return (
            f"{bad} of {records} records ({ratio:.1%} over the last {self._records:,} records and this batch, "
            f"at least {self.minimum:,}) cannot be applied, and {_allowed(max_ratio)}"
        )

    def add(self, records: int, bad: int) -> None:
        self._commits.append((records, bad))
        self._records += records
        self._bad += bad
        while self._commits and self._records - self._commits[0][0] >= self.records:
            old_records, old_bad = self._commits.popleft()
            self._records -= old_records
            self._bad -= old_bad


class RunDeadLetters:
    """``max_dlq_ratio`` over a run (docs/DESIGN.md §9.3): the run may dead-letter up to ``max_dlq_ratio`` × the
    records it planned to read (``RunPlan.total``), however they fall into batches; the batch that exceeds
    that budget fails."""

    def __init__(self, planned: int):
        self.planned = planned
        self._bad = 0

    def judge(self, bad: int, records: int, max_ratio: float) -> str | None:
        run_bad = self._bad + bad
        budget = max_ratio * self.planned
        if run_bad <= budget:
            return None
        allowed = f"max_dlq_ratio {max_ratio:g} allows {int(budget)} over the run" if max_ratio else _allowed(0)
        return (
            f"{run_bad} of the {self.planned} records of this run ({run_bad / max(1, self.planned):.1%}) cannot be "
            f"applied so far ({bad} of the {records} in this batch), and {allowed}"
        )

    def add(self, records: int, bad: int) -> None:
        self._bad += bad


def _per_batch(bad: int, records: int, max_ratio: float) -> str | None:
    """``max_dlq_ratio`` over the batch alone (a writer given no judge)."""
    ratio = bad / records
    if ratio <= max_ratio:
        return None
    return f"{bad} of {records} records ({ratio:.1%}) cannot be applied, and {_allowed(max_ratio)}"


def _allowed(max_ratio: float) -> str:
    return f"max_dlq_ratio is {max_ratio:g}" if max_ratio else "max_dlq_ratio is 0: dead-lettering is off"


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
        dlq_judge: DeadLetterWindow | RunDeadLetters | None = None,
        accepted: dict[int, int] | None = None,
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
        self.dlq_judge = dlq_judge  # None: max_dlq_ratio is judged per batch
        # Positions taken without reading records (RunPlan.accepted: where a new table's partitions begin,
        # skipped retention gaps), recorded in the ledger by the next commit (docs/DESIGN.md §2).
        self.accepted = dict(accepted or {})
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
        if not advancing or (batch.decoded is None and not batch.values):
            # Nothing to write. Offsets that carried no row are re-read next run (harmless: they hold no data).
            return result
        for partition, last in self.accepted.items():
            if last > self.ledger.get(partition, -1):
                advancing.setdefault(partition, last)
        decoded = batch.decoded
        if decoded is None:
            decoded = to_rows(dataset, batch.kafka_records(dataset.topic), self.table_schema, release=True)
            batch.decoded = decoded
            batch.release_records()  # the values went segment by segment; the keys go now
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
        self.accepted = {}
        batch.decoded = None
        if self.dlq_judge is not None:
            self.dlq_judge.add(consumed, len(decoded.bad))
        self.ledger.update(advancing)
        for partition in advancing:
            self.data_loss.pop(partition, None)
        self.table_schema = pa.unify_schemas([self.table_schema, rows.schema]) if self.table_schema else rows.schema
        stats = commit_stats(self.uri, version, self.lake.storage_options)
        result.advancing = advancing
        result.ranges = metadata["ranges"]
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
        """Within ``max_dlq_ratio`` (judged per batch, over the run, or over a stream's window: §9.3): into
        ``<name>_dlq`` first (its own ledger); above it: fail, this batch commits nothing."""
        dataset = self.dataset
        judge = self.dlq_judge.judge if self.dlq_judge is not None else _per_batch
        problem = judge(len(bad), consumed, dataset.max_dlq_ratio)
        if problem is not None:
            first = "; ".join(f"record {dataset.topic}[{r.partition}] offset {r.offset}: {r.error}" for r in bad[:3])
            raise IngestError(
                f"dataset '{dataset.name}': {problem}. First: {first}. Fix the producer, or raise max_dlq_ratio in "
                "the catalog to send such records to the dead-letter table. Nothing was committed for this batch."
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
