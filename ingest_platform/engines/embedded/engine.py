"""The embedded engine: confluent-kafka -> Arrow -> deltalake, in the calling process, no JVM.

One ``run()`` follows docs/DESIGN.md §2: ledger from the table, high watermarks captured at start, ranges
capped by ``max_records_per_run``, batches of at most ``max_batch_bytes`` written as one Delta commit each
(rows plus the partitions' ``txn`` actions), then the monitoring-only commit to the Kafka consumer group.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ingest_platform.catalog import Dataset
from ingest_platform.engines.embedded.batch_writer import BatchWriter, RecordBatch
from ingest_platform.engines.offset_ranges import PartitionRange
from ingest_platform.engines.report import PartitionProgress, RunReport
from ingest_platform.engines.run_plan import IngestError, plan_run
from ingest_platform.kafka.client import KafkaConnection, commit_group_offsets
from ingest_platform.lake.tables import LakeLocation

ENGINE_NAME = "embedded"
#: Messages per ``consume()`` call: large enough to amortise the call, small next to max_batch_bytes.
CONSUME_BATCH = 10_000


class _Committer:
    """Writes batches on one background thread while the caller consumes the next batch.

    Decoding (Arrow) and writing (deltalake) release the GIL, so on two cores consumption overlaps with
    them. Commits stay strictly ordered: ``hand_off`` waits for the previous commit, so at most two batches
    are in memory (one being written, one being filled) and a failed commit stops the run before the next.
    """

    def __init__(self, run: _Run, consumer: Consumer):
        self._run = run
        self._consumer = consumer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"commit-{run.dataset.name}")
        self._pending: Future | None = None

    def hand_off(self, batch: RecordBatch) -> None:
        self.wait()
        self._pending = self._executor.submit(self._run._commit, batch, self._consumer)

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
        self.writer: BatchWriter | None = None  # set once the run is planned

    def execute(self) -> RunReport:
        started = time.monotonic()
        dataset = self.dataset
        consumer = Consumer(self.engine.kafka.consumer_config(dataset.group_id))
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
                self._consume(consumer, ranges)
        finally:
            consumer.close()
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
        self.data_loss = dict(plan.data_loss)
        self.writer = BatchWriter(
            self.dataset, self.engine.lake, self.run_id, ENGINE_NAME, self.started_at, self.ledger,
            self.table_schema, self.first_offsets, self.data_loss, self.log,
        )  # fmt: skip
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
        with _Committer(self, consumer) as committer:
            self._consume_into(consumer, committer, pending)

    def _consume_into(self, consumer: Consumer, committer: _Committer, pending: set[int]) -> None:
        topic = self.dataset.topic
        ends = self.ends
        batch = RecordBatch()
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
                raise IngestError(f"dataset '{self.dataset.name}': reading {topic} failed: {error}") from None
            if not messages:
                # Offsets without records (transaction markers) can end a range: ask where each partition is.
                for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= ends[tp.partition]:
                        finish(tp.partition)
                if pending and time.monotonic() - last_progress > self.engine.idle_timeout_s:
                    raise IngestError(
                        f"dataset '{self.dataset.name}': no records arrived for {self.engine.idle_timeout_s:.0f} s "
                        f"while partitions {sorted(pending)} of {topic} still had data to read (broker down or "
                        "partition leader unavailable?). Nothing of the unread batch was committed; re-run later."
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
                    batch = RecordBatch()
                    nbytes = 0
                    add_value, add_partition, add_offset, add_stamp, add_key = (
                        batch.values.append, batch.partitions.append, batch.offsets.append,
                        batch.timestamps.append, batch.keys.append,
                    )  # fmt: skip
            batch.nbytes = nbytes
        committer.hand_off(batch)

    def _commit(self, batch: RecordBatch, consumer: Consumer) -> None:
        """The batch through the shared writer (dead letters, Delta commit), then the monitoring group commit."""
        assert self.writer is not None
        done = self.writer.commit(batch)
        for partition, (_, count) in done.progress.items():
            self.counts[partition] = self.counts.get(partition, 0) + count
        report = self.report
        report.records += done.records
        report.skipped += done.skipped
        if done.version is None:
            return
        if done.dlq_version is not None:
            report.dlq_commits.append(done.dlq_version)
        report.dead_lettered += done.dead_lettered
        report.rows_inserted += done.rows_inserted
        report.rows_updated += done.rows_updated
        report.rows_deleted += done.rows_deleted
        report.applied += done.applied
        report.rows_written += done.rows_written
        report.bytes_read += done.bytes_read
        report.files_written += done.files_written
        report.bytes_written += done.bytes_written
        report.commits.append(done.version)
        if done.oldest_event_time is not None and done.committed_at is not None:
            lag = (done.committed_at - done.oldest_event_time).total_seconds()
            report.max_event_to_commit_lag_s = max(lag, report.max_event_to_commit_lag_s or lag)
        self._commit_group(consumer, done.advancing)

    def _commit_group(self, consumer: Consumer, advancing: dict[int, int]) -> None:
        """Monitoring only (docs/DESIGN.md §2 step 6): a failure is logged, never fatal."""
        next_offsets = {p: o + 1 for p, o in advancing.items()}
        commit_group_offsets(consumer, self.dataset.topic, next_offsets, f"dataset '{self.dataset.name}'", self.log)
