"""The embedded engine: confluent-kafka -> Arrow -> deltalake, in the calling process, no JVM.

One ``run()`` follows docs/DESIGN.md §2: ledger from the table, high watermarks captured at start, ranges
capped by ``max_records_per_run``, batches of at most ``max_batch_bytes`` written as one Delta commit each
(rows plus the partitions' ``txn`` actions), then the monitoring-only commit to the Kafka consumer group.
"""

from __future__ import annotations

import logging
import time
import uuid
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

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
from ingest_platform.engines.embedded.memory import bound_native_heap
from ingest_platform.engines.embedded.record_values import RecordValues, int_array
from ingest_platform.engines.offset_ranges import PartitionRange
from ingest_platform.engines.report import PartitionProgress, RunReport, run_outcome
from ingest_platform.engines.run_plan import IngestError, plan_run
from ingest_platform.kafka.client import GroupOffsetCommitter, KafkaConnection, describe_failure
from ingest_platform.lake.commit import AppendRequest, LakeWriteError, append_with_ledger, merge_with_ledger
from ingest_platform.lake.dead_letters import write_dead_letters
from ingest_platform.lake.tables import LakeLocation, commit_stats

ENGINE_NAME = "embedded"
#: Messages per ``consume()`` call: large enough to amortise the call, small next to max_batch_bytes.
CONSUME_BATCH = 10_000
#: Preferred data-file size (the guide's 256 MB Parquet block), clamped to the dataset's file-size target.
PREFERRED_FILE_MB = 256


@dataclass
class _Batch:
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

    @property
    def records(self) -> int:
        return len(self.offsets) + len(self.skipped)

    def kafka_records(self, topic: str) -> KafkaRecords:
        return KafkaRecords(topic, self.values, self.partitions, self.offsets, self.timestamps, self.keys)

    def release_records(self) -> None:
        """Drop the raw records once decoded: the batch's rows are written without them (one batch less)."""
        self.values, self.keys = RecordValues(), []
        self.partitions, self.offsets, self.timestamps = array("i"), array("q"), array("q")

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


class _Committer:
    """Writes batches on one background thread while the caller consumes the next batch.

    Decoding (Arrow) and writing (deltalake) release the GIL, so on two cores consumption overlaps with
    them. Commits stay strictly ordered: ``hand_off`` waits for the previous commit, so at most two batches
    are in memory (one being written, one being filled) and a failed commit stops the run before the next.
    """

    def __init__(self, run: _Run):
        self._run = run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"commit-{run.dataset.name}")
        self._pending: Future | None = None

    def hand_off(self, batch: _Batch) -> None:
        self.wait()
        self._pending = self._executor.submit(self._run._commit, batch)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises the commit's error here, in the run's thread

    def __enter__(self) -> _Committer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # let an in-flight commit finish (it is atomic) before failing
        finally:
            self._executor.shutdown(wait=True)


class EmbeddedEngine:
    name = ENGINE_NAME

    def __init__(
        self,
        kafka: KafkaConnection,
        lake: LakeLocation,
        log: logging.Logger | None = None,
        idle_timeout_s: float = 60.0,
    ):
        self.kafka = kafka
        self.lake = lake
        self.log = log or logging.getLogger(__name__)
        self.idle_timeout_s = idle_timeout_s
        bound_native_heap()  # the process's allocators, for the memory bound (docs/DESIGN.md §2 "Memory")

    def run(self, dataset: Dataset, run_id: str | None = None) -> RunReport:
        return _Run(self, dataset, run_id or uuid.uuid4().hex).execute()


class _Run:
    """State of one run of one dataset."""

    def __init__(self, engine: EmbeddedEngine, dataset: Dataset, run_id: str):
        self.engine = engine
        self.dataset = dataset
        self.run_id = run_id
        self.started_at = time.time()  # run metadata: the throughput check divides records by commit - start
        self.log = engine.log
        self.uri = engine.lake.table_uri(dataset.table_path)
        self.report = RunReport(dataset=dataset.name, engine=ENGINE_NAME, table_uri=self.uri)
        self.ledger: dict[int, int] = {}
        self.ends: dict[int, int] = {}
        self.first_offsets: dict[int, int] = {}
        self.counts: dict[int, int] = {}
        self.table_schema: pa.Schema | None = None
        self.data_loss: dict[int, tuple[int, int]] = {}  # skipped retention gaps not yet recorded in a commit
        self.accepted: dict[int, int] = {}  # positions taken without reading, for the next commit (RunPlan)
        self.planned = 0  # records the run reads (RunPlan.total)
        self.committed: list[tuple[int, dict[str, list[int]]]] = []  # (version, ranges) of this run's commits
        self.group_offsets = GroupOffsetCommitter(engine.kafka, dataset.group_id, dataset.topic, engine.log)
        min_mb, max_mb = dataset.slo.file_size_mb.min, dataset.slo.file_size_mb.max
        self.target_file_size = int(min(max_mb, max(min_mb, PREFERRED_FILE_MB)) * 1024 * 1024)

    def execute(self) -> RunReport:
        started = time.monotonic()
        dataset = self.dataset
        consumer = self.engine.kafka.consumer(dataset.group_id)
        try:
            ranges = self._plan(consumer)
            total = sum(r.count for r in ranges)
            if total == 0:
                self.log.info(f"{dataset.name}: no new records in {dataset.topic}; nothing to commit")
            else:
                self.log.info(
                    f"{dataset.name}: reading {total} records from {dataset.topic} "
                    + ", ".join(f"[{r.partition}] {r.start}..{r.end - 1}" for r in ranges if r.count)
                )
                try:
                    self._consume(consumer, ranges)
                except (IngestError, LakeWriteError) as error:
                    # The failed batch was not committed; say what the run's earlier batches did commit.
                    raise type(error)(f"{error} {run_outcome(dataset.topic, self.committed)}") from None
        finally:
            consumer.close()
            self.group_offsets.close()  # the last monitoring commit, at most its deadline
        self.report.duration_s = time.monotonic() - started
        self.report.partitions = [
            PartitionProgress(
                partition=p,
                first_offset=self.first_offsets[p],
                last_offset=self.ledger.get(p, self.first_offsets[p] - 1),
                records=self.counts.get(p, 0),
            )
            for p in sorted(self.first_offsets)
        ]
        return self.report

    def _plan(self, consumer: Consumer) -> list[PartitionRange]:
        plan = plan_run(self.dataset, consumer, self.engine.lake, self.engine.kafka.timeout_s)
        self.table_schema = plan.table_schema
        self.ledger = dict(plan.ledger)
        self.ends = {r.partition: r.end for r in plan.ranges}
        self.first_offsets = {r.partition: r.start for r in plan.ranges}
        self.report.lag_after = plan.lag_after
        self.planned = plan.total  # the records this run reads: the base of max_dlq_ratio
        self.data_loss = dict(plan.data_loss)
        self.accepted = plan.accepted
        if plan.data_loss:
            self.log.warning(
                f"{self.dataset.name}: records were deleted by Kafka retention before they were ingested: "
                f"{plan.describe_data_loss(self.dataset.topic)}; skipped (on_data_loss: skip), recorded in the "
                "next commit's run metadata"
            )
        return plan.ranges

    def _consume(self, consumer: Consumer, ranges: list[PartitionRange]) -> None:
        topic = self.dataset.topic
        pending = {r.partition for r in ranges if r.count > 0}
        consumer.assign([TopicPartition(topic, r.partition, r.start) for r in ranges if r.count > 0])
        with _Committer(self) as committer:
            self._consume_into(consumer, committer, pending)

    def _consume_into(self, consumer: Consumer, committer: _Committer, pending: set[int]) -> None:
        topic = self.dataset.topic
        ends = self.ends
        batch = _Batch()
        max_bytes = self.dataset.max_batch_bytes
        last_progress = time.monotonic()

        def finish(partition: int) -> None:
            pending.discard(partition)
            batch.finished[partition] = ends[partition] - 1
            consumer.pause([TopicPartition(topic, partition)])

        while pending:
            try:
                messages = consumer.consume(num_messages=CONSUME_BATCH, timeout=0.5)
            except KafkaException as error:
                cause = describe_failure(error.args[0], consumer)
                raise IngestError(f"dataset '{self.dataset.name}': reading {topic} failed: {cause}") from None
            if not messages:
                # Offsets without records (transaction markers) can end a range: ask where each partition is.
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= ends[tp.partition]:
                        finish(tp.partition)
                if pending and time.monotonic() - last_progress > self.engine.idle_timeout_s:
                    cause = consumer.problems.cause()
                    raise IngestError(
                        f"dataset '{self.dataset.name}': no records arrived for {self.engine.idle_timeout_s:.0f} s "
                        f"while partitions {sorted(pending)} of {topic} still had data to read ("
                        + (f"last Kafka error: {cause}" if cause else "broker down or partition leader unavailable?")
                        + "). Nothing of the unread batch was committed; re-run later."
                    )
                continue
            last_progress = time.monotonic()
            add_value, add_partition, add_offset, add_stamp, add_key = (
                batch.values.append, batch.partitions.append, batch.offsets.append,
                batch.timestamps.append, batch.keys.append,
            )  # fmt: skip
            nbytes = batch.nbytes
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise IngestError(
                        f"dataset '{self.dataset.name}': Kafka error on {topic}[{message.partition()}]: {error.str()}"
                    )
                partition = message.partition()
                offset = message.offset()
                end = ends[partition]
                if offset >= end:
                    continue  # fetched past the range (the partition is paused already)
                value = message.value()
                if value is None:
                    batch.skipped.append((partition, offset))
                else:
                    key = message.key()
                    add_value(value)
                    add_partition(partition)
                    add_offset(offset)
                    add_stamp(message.timestamp()[1])
                    add_key(key)
                    nbytes += len(value) + (len(key) if key else 0)
                if offset == end - 1:
                    finish(partition)
                if nbytes >= max_bytes:
                    batch.nbytes = nbytes
                    committer.hand_off(batch)
                    batch = _Batch()
                    nbytes = 0
                    add_value, add_partition, add_offset, add_stamp, add_key = (
                        batch.values.append, batch.partitions.append, batch.offsets.append,
                        batch.timestamps.append, batch.keys.append,
                    )  # fmt: skip
            batch.nbytes = nbytes
        committer.hand_off(batch)

    def _commit(self, batch: _Batch) -> None:
        """The batch's dead letters (if any), its Delta commit, then the monitoring commit to the group."""
        dataset = self.dataset
        progress = batch.progress()
        for partition, (_, count) in progress.items():
            self.counts[partition] = self.counts.get(partition, 0) + count
        advancing = {p: last for p, (last, _) in progress.items() if last > self.ledger.get(p, -1)}
        consumed = batch.records
        self.report.records += consumed
        self.report.skipped += len(batch.skipped)
        if not advancing or not batch.values:
            # Nothing to write. Offsets that carried no row are re-read next run (harmless: they hold no data).
            return
        for partition, last in self.accepted.items():  # a new table's starts, skipped gaps: first commit
            advancing.setdefault(partition, last)
        self.accepted = {}
        decoded = to_rows(dataset, batch.kafka_records(dataset.topic), self.table_schema, release=True)
        batch.release_records()  # the values went segment by segment; the rest goes now
        rows = decoded.rows
        metadata = {
            "run_id": self.run_id,
            "engine": ENGINE_NAME,
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
        }
        if dataset.mode == "upsert":
            metadata["key"] = list(decoded.key)
        if decoded.bad:
            self._dead_letter(decoded.bad, consumed, advancing, metadata)
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
            version, rows = self._upsert(request, decoded.key)
        else:
            version = append_with_ledger(self.engine.lake, request)
        committed_at = datetime.now(timezone.utc)
        self.committed.append((version, metadata["ranges"]))
        self.ledger.update(advancing)
        for partition in advancing:
            self.data_loss.pop(partition, None)
        self.table_schema = pa.unify_schemas([self.table_schema, rows.schema]) if self.table_schema else rows.schema
        stats = commit_stats(self.uri, version, self.engine.lake.storage_options)
        report = self.report
        report.applied += decoded.rows.num_rows
        report.rows_written += rows.num_rows
        report.bytes_read += batch.nbytes
        report.files_written += stats.files
        report.bytes_written += stats.bytes
        report.commits.append(version)
        oldest = pc.min(decoded.rows["_event_time"]).as_py() if decoded.rows.num_rows else None
        if oldest is not None:
            lag = (committed_at - oldest).total_seconds()
            report.max_event_to_commit_lag_s = max(lag, report.max_event_to_commit_lag_s or lag)
        self.log.info(
            f"{dataset.name}: committed version {version}: {rows.num_rows} rows, {stats.files} files, "
            f"{len(decoded.bad)} dead-lettered, ledger {dict(sorted(advancing.items()))}"
        )
        self._commit_group(advancing)

    def _dead_letter(self, bad: list, consumed: int, advancing: dict[int, int], metadata: dict) -> None:
        """Within ``max_dlq_ratio`` of the run: into ``<name>_dlq`` first (its own ledger); above it: fail, this
        batch commits nothing.

        The ratio is judged over the run (docs/DESIGN.md §9.3): the run may dead-letter up to ``max_dlq_ratio`` ×
        the records it planned to read, however they fall into batches, and fails at the batch that exceeds it.
        """
        dataset = self.dataset
        run_bad = self.report.dead_lettered + len(bad)
        budget = dataset.max_dlq_ratio * self.planned
        if run_bad > budget:
            first = "; ".join(f"record {dataset.topic}[{r.partition}] offset {r.offset}: {r.error}" for r in bad[:3])
            allowed = (
                f"max_dlq_ratio {dataset.max_dlq_ratio:g} allows {int(budget)} over the run"
                if dataset.max_dlq_ratio
                else "max_dlq_ratio is 0: dead-lettering is off"
            )
            raise IngestError(
                f"dataset '{dataset.name}': {run_bad} of the {self.planned} records of this run "
                f"({run_bad / max(1, self.planned):.1%}) cannot be applied so far ({len(bad)} of the {consumed} in "
                f"this batch), and {allowed}. First: {first}. Fix the producer, or raise max_dlq_ratio in the "
                "catalog to send such records to the dead-letter table. Nothing was committed for this batch."
            )
        version, added = write_dead_letters(self.engine.lake, dataset, bad, advancing, metadata)
        if version is not None:
            self.report.dlq_commits.append(version)
        self.report.dead_lettered += len(bad)
        self.log.warning(
            f"{dataset.name}: {len(bad)} records dead-lettered to {dataset.dlq_table_path} ({added} new); "
            f"first: {dataset.topic}[{bad[0].partition}] offset {bad[0].offset}: {bad[0].error}"
        )

    def _upsert(self, request: AppendRequest, key: tuple[str, ...]) -> tuple[int, pa.Table]:
        """The batch's last change per key, MERGEd (or, for a new table, appended) with the ledger advance."""
        dataset = self.dataset
        changes = last_change_per_key(request.rows, key, order_column(dataset))
        if self.table_schema is None:
            if dataset.format == "debezium" and dataset.delete_mode == "hard" and changes.num_rows:
                changes = changes.filter(pc.not_equal(changes[CDC_OP], DELETE_OP))
            version = append_with_ledger(self.engine.lake, replace(request, rows=changes))
            self.report.rows_inserted += changes.num_rows
            return version, changes
        changes = with_table_columns(changes, self.table_schema)
        clauses = merge_clauses(dataset, key, changes.column_names, quote_datafusion)
        version, metrics = merge_with_ledger(self.engine.lake, replace(request, rows=changes), clauses)
        self.report.rows_inserted += int(metrics.get("num_target_rows_inserted", 0))
        self.report.rows_updated += int(metrics.get("num_target_rows_updated", 0))
        self.report.rows_deleted += int(metrics.get("num_target_rows_deleted", 0))
        return version, changes

    def _empty_rows(self) -> pa.Table:
        if self.table_schema is not None:
            return self.table_schema.empty_table()
        return pa.schema([(name, kind) for name, kind in ENGINE_COLUMN_TYPES.items()]).empty_table()

    def _data_loss_metadata(self, advancing: dict[int, int]) -> dict[str, object]:
        """``data_loss: {"<p>": [first lost, last lost]}`` for skipped gaps this commit moves past."""
        lost = {str(p): list(self.data_loss[p]) for p in sorted(advancing) if p in self.data_loss}
        return {"data_loss": lost} if lost else {}

    def _commit_group(self, advancing: dict[int, int]) -> None:
        """Monitoring only (docs/DESIGN.md §2 step 6): handed to its own thread; a failure is logged, never fatal."""
        next_offsets = {p: o + 1 for p, o in advancing.items()}
        self.group_offsets.commit(next_offsets, f"dataset '{self.dataset.name}'")
