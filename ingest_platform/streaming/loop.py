"""One dataset's micro-batch loop on the offset protocol (docs/DESIGN.md §2, §10 "The loop").

A loop owns one Kafka consumer (assigned partitions, no group membership) and one ``BatchWriter`` (the
embedded engine's commit path). Start positions come from the table's ledger exactly as a run's steps 1
and 4 (``engines/run_plan.py``). A micro-batch opens with its first record and closes ``trigger_interval_s``
later less what a commit takes (so the first record lands about one interval after it arrived), or at
``max_batch_bytes``; closing hands it to the process's shared commit pool, where it becomes one
Delta commit (dead letters first, then append or MERGE with every covered partition's ``txn``, the ledger
compared first), followed by the monitoring-only, asynchronous group commit. One commit is in flight per
dataset; the loop keeps polling meanwhile (and pauses its partitions while its next batch is full or the
process's buffer budget is exhausted). Idle topics open no batch and make no commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from deltalake.exceptions import DeltaError

from ingest_platform.catalog import Dataset
from ingest_platform.engines.embedded.batch_writer import BatchCommit, BatchWriter, DeadLetterWindow, RecordBatch
from ingest_platform.engines.embedded.engine import CONSUME_BATCH, ENGINE_NAME
from ingest_platform.engines.offset_ranges import OffsetRangeError, start_offsets
from ingest_platform.engines.run_plan import IngestError, plan_run
from ingest_platform.kafka.client import CONSUMER_TUNING, KafkaConnection, KafkaReadError, topic_partitions, watermarks
from ingest_platform.lake.commit import ConcurrentWriterError, LakeSchemaError, LakeWriteError
from ingest_platform.lake.ledger import read_ledger
from ingest_platform.lake.tables import LakeAccessError, LakeLocation
from ingest_platform.streaming.budget import BufferBudget
from ingest_platform.streaming.commit_pool import CommitPool
from ingest_platform.streaming.events import CONFLICT, FAILED, RUNNING, STARTING, STOPPED, CommitEvent, DatasetState
from ingest_platform.streaming.latency import batch_latency
from ingest_platform.streaming.metrics import StreamMetrics, labels_of
from ingest_platform.streaming.retry import Backoff, RetryPolicy

#: Longest single wait in ``consume()``: bounds how late a stop request or a due batch is noticed.
POLL_S = 0.5
#: Deadline of one metadata / watermark request from the loop (a broker that does not answer is retried).
REQUEST_TIMEOUT_S = 10.0
#: A repeated Kafka error (broker down) is logged at most this often per dataset; every one is counted.
LOG_EVERY_S = 30.0
#: Lake errors that retrying the same rows cannot fix.
_LAKE_FAILURES = (LakeAccessError, LakeWriteError, DeltaError, OSError)


class StreamFailure(RuntimeError):
    """An error retrying cannot fix: the dataset stops with this message, the other datasets go on."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class LedgerConflict(RuntimeError):
    """Another writer moved the ledger and the loop was told to stop, not re-plan (sharded workers, DESIGN §12)."""


@dataclass(frozen=True)
class LoopSettings:
    """What one loop needs from the process's settings (``process.StreamSettings``)."""

    trigger_interval_s: float
    consumer_prefetch_bytes: int
    metadata_refresh_s: float
    retry: RetryPolicy
    stuck_after_s: float  # liveness: no poll (or retry) for longer than this
    commit_stuck_after_s: float  # liveness: one commit in flight for longer than this
    stop_on_conflict: bool = False  # a ledger conflict stops the loop instead of re-planning (DESIGN §12)


@dataclass(frozen=True)
class LoopParts:
    """What every dataset loop gets from its stream process (``process.StreamProcess.add``)."""

    dataset: Dataset
    kafka: KafkaConnection
    lake: LakeLocation
    settings: LoopSettings
    metrics: StreamMetrics
    session: str
    on_commit: Callable[[CommitEvent], None] | None = None
    on_state: Callable[[DatasetState], None] | None = None
    log: logging.Logger | None = None


@dataclass
class _Outcome:
    kind: str  # "ok", "conflict", "fatal", "abandoned"
    commit: BatchCommit | None = None
    error: str | None = None
    error_kind: str = "lake"


@dataclass
class _InFlight:
    future: Future
    nbytes: int
    started: float  # monotonic, batch closed
    records: int = 0


class LoopLife:
    """What every dataset loop of a stream process shares (this module's consumer loop, ``spark_loop``'s query):
    its fields, its state and ``on_state``, the thread body that turns failures into states and metrics,
    rate-limited warnings. Subclasses define ``_main`` (the thread's body)."""

    def __init__(self, parts: LoopParts, thread_name: str, default_log: logging.Logger):
        dataset = parts.dataset
        self.dataset = dataset
        self.kafka = parts.kafka
        self.lake = parts.lake
        self.settings = parts.settings
        self.trigger_s = parts.settings.trigger_interval_s
        self.metrics = parts.metrics
        self.session = parts.session
        self.on_commit = parts.on_commit
        self.on_state = parts.on_state
        self.log = parts.log or default_log
        self.labels = labels_of(dataset)
        self.state = DatasetState(dataset.name, STARTING)
        self.last_activity = time.monotonic()  # last poll, retry or commit (liveness)
        self.commits = 0
        self._stop = threading.Event()  # stop serving, drain
        self._drain_deadline = float("inf")
        self._seq = 0
        self._logged_at: dict[str, float] = {}
        self._consumer: Consumer | None = None
        self.thread = threading.Thread(target=self._main, name=f"{thread_name}-{dataset.name}", daemon=True)

    def _main(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.metrics.register_dataset(self.dataset)
        self.thread.start()

    def request_stop(self, deadline: float) -> None:
        """Stop serving; what is in flight finishes when it can by ``deadline`` (the loop's own rule)."""
        self._drain_deadline = deadline
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self.state.status in (STARTING, RUNNING)

    def _guarded(self, serve: Callable[[], None], cleanup: Callable[[], None], what: str) -> None:
        """Run ``serve`` on the loop's thread: STOPPED when it returns, FAILED (with the error's kind) when it
        raises; ``cleanup`` always; ``ingestion_stream_up`` 0 after a failure."""
        name = self.dataset.name
        try:
            serve()
            self._set_state(STOPPED)
        except LedgerConflict as conflict:  # sharded: another worker owns the dataset now (DESIGN §12)
            self.log.warning(f"{name}: stopped: {conflict}")
            self._set_state(STOPPED, str(conflict), CONFLICT)
        except StreamFailure as failure:
            self.metrics.error(self.dataset, failure.kind)
            self.log.error(f"{name}: the stream stopped: {failure}")
            self._set_state(FAILED, str(failure), failure.kind)
        except Exception as error:  # noqa: BLE001 - a bug stops this dataset, never the others
            self.log.exception(f"{name}: internal error in the {what}")
            self.metrics.error(self.dataset, "internal")
            self._set_state(FAILED, f"dataset '{name}': internal error in the {what}: {error!r}", "internal")
        finally:
            cleanup()
            if self.state.status == FAILED:
                self.metrics.up.labels(*self.labels).set(0)

    def _set_state(self, status: str, error: str | None = None, kind: str | None = None) -> None:
        self.state = DatasetState(self.dataset.name, status, error, kind)
        if self.on_state is not None:
            try:
                self.on_state(self.state)
            except Exception:  # noqa: BLE001 - the caller's callback must not break the loop
                self.log.exception(f"{self.dataset.name}: the on_state callback failed")

    def _log_warning(self, topic: str, message: str) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(topic, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[topic] = now
            self.log.warning(message)


class DatasetLoop(LoopLife):
    def __init__(self, parts: LoopParts, budget: BufferBudget, pool: CommitPool):
        super().__init__(parts, "stream", logging.getLogger(__name__))
        self.budget = budget
        self.pool = pool
        self.pauses = 0  # times the loop paused its partitions (next batch full, or the budget exhausted)
        self.last_commit_s = 0.0  # how long the last commit took (to judge whether a drain has time for one)
        self.commit_estimate_s = 0.0  # recent commits' duration (EWMA): taken off a batch's open time
        self._abandon = threading.Event()  # the drain deadline passed: stop retrying the in-flight commit
        self._writer: BatchWriter | None = None
        self._positions: dict[int, int] = {}  # partition -> next offset to read
        self._batch: RecordBatch | None = None
        self._batch_opened = 0.0
        self._batch_opened_at = datetime.now(timezone.utc)
        self._inflight: _InFlight | None = None
        self._paused = False
        self._next_refresh = 0.0
        self._dlq_window = DeadLetterWindow()  # max_dlq_ratio over the last records, kept across re-plans

    # -- control (any thread) ------------------------------------------------------------------------------------

    def join(self, timeout: float | None) -> bool:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self._abandon.set()
            return False
        return True

    def stuck(self, now: float) -> str | None:
        """Why liveness fails for this loop, or None (docs/DESIGN.md §11 "Health")."""
        if not self.alive or not self.thread.is_alive():
            return None
        idle = now - self.last_activity
        if idle > self.settings.stuck_after_s:
            return f"no poll for {idle:.0f} s (limit {self.settings.stuck_after_s:.0f} s)"
        inflight = self._inflight
        if inflight is not None and not inflight.future.done():
            running = now - inflight.started
            if running > self.settings.commit_stuck_after_s:
                return f"one commit in flight for {running:.0f} s (limit {self.settings.commit_stuck_after_s:.0f} s)"
        return None

    # -- the loop thread -----------------------------------------------------------------------------------------

    def _main(self) -> None:
        self._guarded(self._serve, self._close, "stream loop")

    def _close(self) -> None:
        self._drop_batch()
        if self._inflight is not None and self._inflight.future.done():
            self.budget.give(self._inflight.nbytes)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError):
                pass

    def _serve(self) -> None:
        self._consumer = Consumer(self.kafka.consumer_config(self.dataset.group_id, self._consumer_overrides()))
        if not self._plan():
            return  # stopped while still planning
        self._set_state(RUNNING)
        while not self._stop.is_set():
            self._poll_once()
        self._drain()

    def _consumer_overrides(self) -> dict:
        """Prefetch bounded per consumer: librdkafka's queue and fetch sizes (docs/DESIGN.md §10 "Memory")."""
        prefetch = max(1_048_576, int(self.settings.consumer_prefetch_bytes))
        return {
            "queued.max.messages.kbytes": prefetch // 1024,
            "fetch.max.bytes": prefetch,
            "max.partition.fetch.bytes": min(CONSUMER_TUNING["max.partition.fetch.bytes"], prefetch),
            "error_cb": self._on_kafka_error,
            "on_commit": self._on_group_commit,
        }

    # -- positions -----------------------------------------------------------------------------------------------

    def _plan(self) -> bool:
        """Positions from the ledger (a run's steps 1 and 4), retried with backoff; False when stopped meanwhile."""
        backoff = Backoff(self.settings.retry, self._stop)
        while True:
            try:
                self._plan_once()
                return True
            except OffsetRangeError as error:
                raise StreamFailure(str(error), "data_loss") from None
            except IngestError as error:  # plan_run's Kafka read errors (metadata, watermarks)
                kind, message = "kafka", str(error)
            except _LAKE_FAILURES as error:
                kind, message = "lake", f"dataset '{self.dataset.name}': cannot read the table's ledger: {error}"
            self.metrics.error(self.dataset, kind)
            self._log_warning(kind, f"{message}; retrying (attempt {backoff.failures + 1})")
            self.last_activity = time.monotonic()
            if not backoff.failed():
                if self._stop.is_set():
                    return False
                raise StreamFailure(
                    f"{message} (retried for {backoff.failing_for_s:.0f} s; restart the stream once it is reachable)",
                    kind,
                )
            self.last_activity = time.monotonic()

    def _plan_once(self) -> None:
        dataset, consumer = self.dataset, self._consumer
        assert consumer is not None
        plan = plan_run(dataset, consumer, self.lake, min(self.kafka.timeout_s, REQUEST_TIMEOUT_S))
        starts = {r.partition: r.start for r in plan.ranges}
        self._writer = BatchWriter(
            dataset, self.lake, self.session, ENGINE_NAME, time.time(), dict(plan.ledger), plan.table_schema,
            dict(starts), dict(plan.data_loss), self.log, self._dlq_window, plan.accepted,
        )  # fmt: skip
        if plan.data_loss:
            self.metrics.error(dataset, "data_loss")
            self.log.warning(
                f"{dataset.name}: records were deleted by Kafka retention before they were ingested: "
                f"{plan.describe_data_loss(dataset.topic)}; skipped (on_data_loss: skip), recorded in the next "
                "commit's run metadata"
            )
        self._positions = dict(starts)
        consumer.assign([TopicPartition(dataset.topic, p, o) for p, o in sorted(starts.items())])
        self._paused = False
        self._next_refresh = time.monotonic() + self.settings.metadata_refresh_s
        self.metrics.lag.labels(*self.labels).set(sum(r.end - r.start for r in plan.ranges) + plan.lag_after)
        self.log.info(
            f"{dataset.name}: streaming {dataset.topic} from "
            + ", ".join(f"[{p}] {o}" for p, o in sorted(starts.items()))
            + f" (trigger {self.trigger_s:g} s)"
        )

    def _refresh_partitions(self) -> None:
        """New partitions are assigned without a restart, from their ledger or their start (§2 step 1)."""
        dataset, consumer, writer = self.dataset, self._consumer, self._writer
        assert consumer is not None and writer is not None
        self._next_refresh = time.monotonic() + self.settings.metadata_refresh_s
        timeout = min(self.kafka.timeout_s, REQUEST_TIMEOUT_S)
        try:
            partitions = topic_partitions(consumer, dataset.topic, timeout)
            new = [p for p in partitions if p not in self._positions]
            if new:
                marks = watermarks(consumer, dataset.topic, new, timeout)
                ledger = read_ledger(self.lake.open_table(dataset.table_path), dataset.name, new)
        except KafkaReadError as error:
            self.metrics.error(dataset, "kafka")
            self._log_warning("kafka", f"{dataset.name}: {error}; retrying at the next refresh")
            return
        except _LAKE_FAILURES as error:
            self.metrics.error(dataset, "lake")
            self._log_warning("lake", f"{dataset.name}: cannot read the table's ledger: {error}; retrying")
            return
        if new:
            lost: dict[int, tuple[int, int]] = {}
            try:
                # Judged against the whole ledger: on a table that has one, a partition added later starts at 0.
                starts = start_offsets(dataset.name, dataset.topic, {**writer.ledger, **ledger}, marks,
                                       dataset.on_data_loss, lost)  # fmt: skip
            except OffsetRangeError as error:
                raise StreamFailure(str(error), "data_loss") from None
            writer.ledger.update(ledger)
            writer.first_offsets.update(starts)
            writer.data_loss.update(lost)
            self._positions.update(starts)
            added = [TopicPartition(dataset.topic, p, o) for p, o in sorted(starts.items())]
            consumer.incremental_assign(added)
            if self._paused:
                consumer.pause(added)
            self.log.info(
                f"{dataset.name}: picked up new partition(s) of {dataset.topic}: "
                + ", ".join(f"[{p}] from {o}" for p, o in sorted(starts.items()))
            )
        self._update_lag()

    def _update_lag(self) -> None:
        """``kafka_consumer_lag_sum`` from the ledger and the log ends librdkafka last saw (no request)."""
        consumer, writer = self._consumer, self._writer
        if consumer is None or writer is None:
            return
        lag = 0
        for partition in self._positions:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.dataset.topic, partition), cached=True)
            except KafkaException:
                return
            if high < 0:
                return  # not known yet
            position = writer.ledger[partition] + 1 if partition in writer.ledger else writer.first_offsets[partition]
            lag += max(0, high - position)
        self.metrics.lag.labels(*self.labels).set(lag)

    # -- polling -------------------------------------------------------------------------------------------------

    def _poll_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        now = time.monotonic()
        self._collect_commit()
        if now >= self._next_refresh:
            self._refresh_partitions()
        batch = self._batch
        if batch is not None and self._inflight is None:
            if now >= self._batch_opened + self.open_for_s() or batch.nbytes >= self.dataset.max_batch_bytes:
                self._hand_off()
        full = self._batch is not None and self._batch.nbytes >= self.dataset.max_batch_bytes
        self._set_paused(full or self.budget.exhausted)
        timeout = POLL_S
        if self._batch is not None:
            timeout = min(timeout, max(0.01, self._batch_opened + self.open_for_s() - now))
        if self._inflight is not None:
            timeout = min(timeout, 0.05)
        try:
            messages = consumer.consume(num_messages=CONSUME_BATCH, timeout=timeout)
        except KafkaException as error:
            self.metrics.error(self.dataset, "kafka")
            self._log_warning("kafka", f"{self.dataset.name}: reading {self.dataset.topic} failed: {error}")
            messages = []
        self.last_activity = time.monotonic()
        if messages:
            self._add(messages)

    def open_for_s(self) -> float:
        """How long a batch stays open: the trigger interval less what a commit takes, so that its first record is
        in the table about one trigger interval after it arrived (never less than half the interval)."""
        return max(self.trigger_s / 2, self.trigger_s - self.commit_estimate_s)

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self._consumer is None:
            return
        partitions = [TopicPartition(self.dataset.topic, p) for p in self._positions]
        (self._consumer.pause if paused else self._consumer.resume)(partitions)
        self._paused = paused
        self.pauses += paused

    def _add(self, messages: list) -> None:
        batch = self._batch
        positions = self._positions
        added = 0
        for message in messages:
            error = message.error()
            if error is not None:
                self._message_error(message, error)
                continue
            partition, offset = message.partition(), message.offset()
            if offset < positions.get(partition, 0):
                continue  # already read (re-delivered after a seek)
            if batch is None:
                batch = self._open_batch()
            value = message.value()
            if value is None:
                batch.skipped.append((partition, offset))
            else:
                key = message.key()
                batch.values.append(value)
                batch.partitions.append(partition)
                batch.offsets.append(offset)
                batch.timestamps.append(message.timestamp()[1])
                batch.keys.append(key)
                added += len(value) + (len(key) if key else 0)
            positions[partition] = offset + 1
        if batch is not None:
            batch.nbytes += added
            self.budget.take(added)

    def _open_batch(self) -> RecordBatch:
        self._batch = RecordBatch()
        self._batch_opened = time.monotonic()
        self._batch_opened_at = datetime.now(timezone.utc)
        return self._batch

    def _drop_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            self.budget.give(batch.nbytes)

    def _message_error(self, message, error: KafkaError) -> None:
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE) and (
            message.partition() in self._positions
        ):
            self._out_of_range(message.partition())
            return
        if error.fatal():
            raise StreamFailure(
                f"dataset '{self.dataset.name}': fatal Kafka consumer error on {self.dataset.topic}: {error.str()}",
                "kafka",
            )
        self.metrics.error(self.dataset, "kafka")
        self._log_warning("kafka", f"{self.dataset.name}: Kafka error on {self.dataset.topic}: {error.str()}")

    def _out_of_range(self, partition: int) -> None:
        """The next offset is gone (retention) or beyond the log end (recreated topic): ``on_data_loss`` decides."""
        dataset, consumer, writer = self.dataset, self._consumer, self._writer
        assert consumer is not None and writer is not None
        position = self._positions[partition]
        try:
            marks = watermarks(consumer, dataset.topic, [partition], min(self.kafka.timeout_s, REQUEST_TIMEOUT_S))
        except KafkaReadError as error:
            self.metrics.error(dataset, "kafka")
            self._log_warning("kafka", f"{dataset.name}: {error}")
            return
        lost: dict[int, tuple[int, int]] = {}
        try:
            start = start_offsets(dataset.name, dataset.topic, {partition: position - 1}, marks,
                                  dataset.on_data_loss, lost)[partition]  # fmt: skip
        except OffsetRangeError as error:
            raise StreamFailure(str(error), "data_loss") from None
        if start == position:
            return
        self.metrics.error(dataset, "data_loss")
        self.log.warning(
            f"{dataset.name}: {dataset.topic}[{partition}] offsets {position}..{start - 1} were deleted by Kafka "
            "retention before they were read; skipped (on_data_loss: skip), recorded in the next commit"
        )
        writer.data_loss.update(lost)
        self._positions[partition] = start
        consumer.incremental_unassign([TopicPartition(dataset.topic, partition)])
        consumer.incremental_assign([TopicPartition(dataset.topic, partition, start)])

    # -- commits -------------------------------------------------------------------------------------------------

    def _hand_off(self) -> None:
        batch, self._batch = self._batch, None
        assert batch is not None and self._writer is not None
        self._seq += 1
        run_id = f"{self.session}-{self.dataset.name}-{self._seq}"
        opened_at = self._batch_opened_at
        closed = time.monotonic()
        future = self.pool.submit(lambda: self._commit(batch, run_id, opened_at, closed))
        self._inflight = _InFlight(future, batch.nbytes, closed, batch.records)

    def _collect_commit(self) -> None:
        inflight = self._inflight
        if inflight is None or not inflight.future.done():
            return
        self._inflight = None
        self.budget.give(inflight.nbytes)
        outcome: _Outcome = inflight.future.result()  # an exception here is a bug: the loop fails "internal"
        self.last_activity = time.monotonic()
        if outcome.kind == "ok":
            if outcome.commit is not None and outcome.commit.version is not None:
                self._commit_group(outcome.commit.advancing)  # on this thread: the consumer's only user
            self._update_lag()
        elif outcome.kind == "conflict":
            self.metrics.error(self.dataset, "lake")
            if self.settings.stop_on_conflict:
                raise LedgerConflict(f"{(outcome.error or '').rstrip('.')}. Sharded: this worker may no longer own "
                                     "the dataset, so it stops it instead of re-planning (DESIGN §12)")  # fmt: skip
            self.log.warning(f"{(outcome.error or '').rstrip('.')}. The stream re-reads its positions from the ledger "
                             "and goes on.")
            if not self._stop.is_set():
                self._drop_batch()
                if not self._plan():
                    return
        elif outcome.kind == "fatal":
            raise StreamFailure(outcome.error or "commit failed", outcome.error_kind)

    def _commit(self, batch: RecordBatch, run_id: str, opened_at: datetime, closed: float) -> _Outcome:
        """On a commit thread: the batch through the shared writer, retried while the lake fails."""
        dataset, writer = self.dataset, self._writer
        assert writer is not None
        before = dict(writer.ledger)
        extra = {"run_id": run_id, "started_at": round(opened_at.timestamp(), 3), "stream": self.session,
                 "trigger_interval_s": self.trigger_s}  # fmt: skip
        backoff = Backoff(self.settings.retry, self._abandon)
        while True:
            try:
                done = writer.commit(batch, extra)
                break
            except ConcurrentWriterError as error:
                self.metrics.batches.labels(*self.labels, "failed").inc()
                return _Outcome("conflict", error=str(error))
            except LakeSchemaError as error:
                self.metrics.batches.labels(*self.labels, "failed").inc()
                return _Outcome("fatal", error=str(error), error_kind="lake")
            except IngestError as error:  # bad records without dead-lettering, max_dlq_ratio exceeded
                self.metrics.batches.labels(*self.labels, "failed").inc()
                return _Outcome("fatal", error=str(error), error_kind="decode")
            except _LAKE_FAILURES as error:
                self.metrics.batches.labels(*self.labels, "failed").inc()
                if self._ledger_moved(before):
                    return _Outcome("conflict", error=f"dataset '{dataset.name}': another writer advanced the "
                                                      f"ledger of {writer.uri} ({error})")  # fmt: skip
                self.metrics.error(dataset, "lake")
                self._log_warning("lake", f"{dataset.name}: the Delta commit failed: {error}; retrying "
                                          f"(attempt {backoff.failures + 1}; nothing of this batch is committed)")
                if not backoff.failed():
                    if self._abandon.is_set() or self._stop.is_set():
                        return _Outcome("abandoned", error=str(error))
                    return _Outcome("fatal", error_kind="lake", error=(
                        f"dataset '{dataset.name}': the lake refused this batch's commit for "
                        f"{backoff.failing_for_s:.0f} s: {error}. Nothing of it was committed; restart the stream "
                        "once the lake is reachable (it resumes from the ledger)."))  # fmt: skip
        self._after_commit(batch, done, before, opened_at, closed)
        return _Outcome("ok", commit=done)

    def _ledger_moved(self, before: dict[int, int]) -> bool:
        try:
            table = self.lake.open_table(self.dataset.table_path)
            return read_ledger(table, self.dataset.name, before) != before
        except _LAKE_FAILURES:
            return False

    def _after_commit(self, batch: RecordBatch, done: BatchCommit, before: dict[int, int], opened_at: datetime,
                      closed: float) -> None:  # fmt: skip
        dataset, writer, metrics, labels = self.dataset, self._writer, self.metrics, self.labels
        assert writer is not None
        if done.version is None or done.committed_at is None:
            return  # nothing to write (null values only): re-read after a restart, harmless
        duration = time.monotonic() - closed
        self.last_commit_s = duration
        self.commit_estimate_s = duration if not self.commits else 0.7 * self.commit_estimate_s + 0.3 * duration
        self.commits += 1
        committed_ms = int(done.committed_at.timestamp() * 1000)
        sample = batch_latency(batch.timestamps, committed_ms)
        metrics.committed(labels, done.records, batch.nbytes, done.dead_lettered, done.files_written,
                          done.committed_at.timestamp(), done.version, duration, sample)  # fmt: skip
        if self.on_commit is None:
            return
        ranges = {p: (max(before.get(p, -1) + 1, writer.first_offsets[p]), last) for p, last in done.advancing.items()}
        event = CommitEvent(
            dataset=dataset.name, pipeline=dataset.pipeline, topic=dataset.topic, table_uri=writer.uri,
            version=done.version, records=done.records, applied=done.applied, rows=done.rows_written,
            skipped=done.skipped, dead_letters=done.dead_lettered, dlq_version=done.dlq_version, bytes=batch.nbytes,
            files=done.files_written, bytes_written=done.bytes_written, rows_inserted=done.rows_inserted,
            rows_updated=done.rows_updated, rows_deleted=done.rows_deleted, ranges=ranges,
            latency_p50_s=sample.p50_s, latency_p99_s=sample.p99_s, batch_opened_at=opened_at,
            committed_at=done.committed_at, commit_duration_s=duration,
        )  # fmt: skip
        try:
            self.on_commit(event)
        except Exception:  # noqa: BLE001 - the caller's callback must not break the stream
            metrics.error(dataset, "internal")
            self.log.exception(f"{dataset.name}: the on_commit callback failed (the commit itself succeeded)")

    def _commit_group(self, advancing: dict[int, int]) -> None:
        """Monitoring only (§2 step 6), asynchronous: never blocks the stream; failures are logged."""
        consumer = self._consumer
        if consumer is None or not advancing:
            return
        offsets = [TopicPartition(self.dataset.topic, p, o + 1) for p, o in sorted(advancing.items())]
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except (KafkaException, RuntimeError) as error:
            self._log_warning("group", f"{self.dataset.name}: committing offsets to the consumer group failed "
                                       f"({error}); lag monitors lag behind until the next commit")  # fmt: skip

    def _on_group_commit(self, error, _partitions) -> None:
        if error is not None:
            self._log_warning("group", f"{self.dataset.name}: the consumer-group commit (monitoring only) failed: "
                                       f"{error}")  # fmt: skip

    def _on_kafka_error(self, error: KafkaError) -> None:
        self.metrics.error(self.dataset, "kafka")
        self._log_warning("kafka", f"{self.dataset.name}: Kafka: {error.str()}")
        if error.fatal():
            self.log.error(f"{self.dataset.name}: fatal Kafka client error: {error.str()}")

    # -- stopping ------------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Finish the in-flight commit; commit the open batch too when the deadline leaves time for it."""
        deadline = self._drain_deadline
        self._wait_inflight(deadline)
        self._collect_commit()
        batch = self._batch
        if batch is not None and self._inflight is None and self.state.status == RUNNING:
            if time.monotonic() + 2 * self.last_commit_s + 0.25 < deadline:
                self._hand_off()
                self._wait_inflight(deadline)
                self._collect_commit()
            else:
                self.log.info(f"{self.dataset.name}: stopping without committing the open batch of "
                              f"{batch.records} records: the next start re-reads them from the ledger")
        if self._inflight is not None:
            self._abandon.set()
            self.log.warning(f"{self.dataset.name}: stopping with a commit still running; it lands whole or not at "
                             "all, and the next start resumes from the ledger")  # fmt: skip

    def _wait_inflight(self, deadline: float) -> None:
        inflight = self._inflight
        while inflight is not None and not inflight.future.done() and time.monotonic() < deadline:
            wait([inflight.future], timeout=max(0.0, min(0.05, deadline - time.monotonic())))
            self.last_activity = time.monotonic()
