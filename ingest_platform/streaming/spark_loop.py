"""One ``engine: spark`` dataset served by a Spark Structured Streaming query (docs/DESIGN.md §10.10).

The guide's query — ``readStream.format("kafka")`` … ``trigger(processingTime=trigger_interval_s)`` — with a
``foreachBatch`` writer on the offset protocol instead of the Delta sink: each micro-batch is one Delta commit
with one ``txn`` per partition (``engines/spark/micro_batch.py``). Positions come from the ledger: the query
starts at the positions ``plan_run`` gives (ledger + 1, the retention rules of a run), on a checkpoint only
when it resumes exactly there (``spark_checkpoint.py``). The loop has ``DatasetLoop``'s interface (``start``,
``request_stop``, ``join``, ``alive``, ``stuck``, ``state``), its metrics, ``CommitEvent``s and states, so the
stream process, its endpoints and the Dagster supervision serve both alike.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer
from deltalake.exceptions import DeltaError

from ingest_platform.engines.offset_ranges import OffsetRangeError
from ingest_platform.engines.run_plan import IngestError, plan_run
from ingest_platform.kafka.client import GroupOffsetCommitter, KafkaReadError, watermarks
from ingest_platform.lake.commit import ConcurrentWriterError, LakeSchemaError, LakeWriteError
from ingest_platform.lake.tables import LakeAccessError
from ingest_platform.streaming.events import RUNNING, CommitEvent
from ingest_platform.streaming.latency import batch_latency
from ingest_platform.streaming.loop import REQUEST_TIMEOUT_S, LoopLife, LoopParts, StreamFailure
from ingest_platform.streaming.retry import Backoff
from ingest_platform.streaming.spark_checkpoint import checkpoint_dir, disagreement, discard, resume_offsets

#: How often the loop's thread looks at its query (stop requests, failures, liveness).
WATCH_S = 0.5
#: Starting the Spark session (the JVM, connectors from the Ivy cache) may take this long before liveness fails.
SESSION_START_S = 300.0
#: Bounds of the time a stop gives the micro-batch in flight (``drain_s``).
MIN_DRAIN_S, MAX_DRAIN_S = 25.0, 120.0
#: Errors of a commit that retrying the same batch later can fix.
_RETRIABLE = (LakeAccessError, LakeWriteError, DeltaError, OSError, ConcurrentWriterError)
_session_lock = threading.Lock()


class SparkStreamLoop(LoopLife):
    def __init__(self, parts: LoopParts, spark_session: Callable[[], object], checkpoint_root: str | Path):
        super().__init__(parts, "spark-stream", logging.getLogger(__name__))
        dataset = parts.dataset
        self.spark_session = spark_session
        self.uri = parts.lake.table_uri(dataset.table_path)
        self.checkpoint = checkpoint_dir(checkpoint_root, dataset.table_path, self.uri)
        self.last_batch_s = 0.0  # how long the last micro-batch commit took
        self.queries = 0  # queries started (1 + restarts after failures or a rewound ledger)
        self.resumed = False  # the last query started on the checkpoint (it agreed with the ledger)
        self._starting_session = False
        self._stopping = threading.Event()  # no micro-batch commits any more (set before the query is stopped)
        self._batch_lock = threading.Lock()  # held by the micro-batch being committed
        self._batch_started: float | None = None
        self._batch_error: BaseException | None = None
        self._seen: dict[int, int] = {}  # partition -> last offset committed or found in the table
        self._committed: dict[int, int] = {}  # partition -> last offset, for the monitoring group commit
        self._group_due = False
        self._engine = None
        self._backoff: Backoff | None = None
        self._partitions: list[int] = []
        self._data_loss: dict[int, tuple[int, int]] = {}  # skipped by on_data_loss: skip, until a commit records it
        self._group: GroupOffsetCommitter | None = None  # monitoring-only group commits, never blocking (§2)

    # -- control (any thread) ------------------------------------------------------------------------------------

    def join(self, timeout: float | None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def drain_s(self) -> float:
        """Time a stop gives the micro-batch in flight: twice the last one's duration, 25 to 120 s (a Spark
        micro-batch takes seconds, far more than the embedded loop's commits; 25 s before the first)."""
        return min(MAX_DRAIN_S, max(MIN_DRAIN_S, 2 * self.last_batch_s))

    def stuck(self, now: float) -> str | None:
        if not self.alive or not self.thread.is_alive():
            return None
        idle = now - self.last_activity
        limit = SESSION_START_S if self._starting_session else self.settings.stuck_after_s
        if idle > limit:
            return f"no progress for {idle:.0f} s (limit {limit:.0f} s)"
        started = self._batch_started
        if started is not None and now - started > self.settings.commit_stuck_after_s:
            return (f"one micro-batch commit in flight for {now - started:.0f} s "
                    f"(limit {self.settings.commit_stuck_after_s:.0f} s)")  # fmt: skip
        return None

    # -- the loop thread -----------------------------------------------------------------------------------------

    def _main(self) -> None:
        self._guarded(self._serve, self._close, "Spark stream")

    def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()
        group, self._group = self._group, None
        if group is not None:
            group.close()

    def _serve(self) -> None:
        from ingest_platform.engines.spark.engine import SparkEngine

        self._consumer = Consumer(self.kafka.consumer_config(self.dataset.group_id))
        self._starting_session = True
        try:
            with _session_lock:
                spark = self.spark_session()
        except Exception as error:  # noqa: BLE001 - named: the JVM or a connector could not start
            raise StreamFailure(f"dataset '{self.dataset.name}': the Spark session did not start: {error}",
                                "internal") from None  # fmt: skip
        finally:
            self._starting_session = False
            self.last_activity = time.monotonic()
        self._engine = SparkEngine(self.kafka, self.lake, spark, log=self.log)
        backoff = self._backoff = Backoff(self.settings.retry, self._stop)
        while not self._stop.is_set():
            starts = self._plan(backoff)
            if starts is None:
                return
            query = self._start_query(spark, starts)
            self._set_state(RUNNING)
            failure = self._watch(query)
            if failure is None:
                return  # stopped
            kind, message = failure
            self.metrics.error(self.dataset, kind)
            self.log.warning(f"{message}; restarting the query from the ledger (attempt {backoff.failures + 1})")
            if not backoff.failed():
                if self._stop.is_set():
                    return
                raise StreamFailure(f"{message} (retried for {backoff.failing_for_s:.0f} s; restart the stream once "
                                    "the cause is fixed: it resumes from the ledger)", kind)  # fmt: skip

    def _plan(self, backoff: Backoff) -> dict[int, int] | None:
        """Start positions from the ledger (a run's steps 1 and 4), retried like the embedded loop's."""
        while True:
            try:
                plan = plan_run(self.dataset, self._consumer, self.lake, min(self.kafka.timeout_s, REQUEST_TIMEOUT_S))
                starts = {r.partition: r.start for r in plan.ranges}
                self._partitions = sorted(starts)
                self._data_loss = dict(plan.data_loss)
                self._seen = dict(plan.ledger)
                self._committed = dict(plan.ledger)
                self.metrics.lag.labels(*self.labels).set(sum(r.end - r.start for r in plan.ranges) + plan.lag_after)
                if plan.data_loss:
                    self.metrics.error(self.dataset, "data_loss")
                    self.log.warning(f"{self.dataset.name}: records deleted by Kafka retention before they were "
                                     f"ingested are skipped (on_data_loss: skip): "
                                     f"{plan.describe_data_loss(self.dataset.topic)}")  # fmt: skip
                return starts
            except OffsetRangeError as error:
                raise StreamFailure(str(error), "data_loss") from None
            except IngestError as error:
                kind, message = "kafka", str(error)
            except (LakeAccessError, DeltaError, OSError) as error:
                kind, message = "lake", f"dataset '{self.dataset.name}': cannot read the table's ledger: {error}"
            self.metrics.error(self.dataset, kind)
            self._log_warning(kind, f"{message}; retrying (attempt {backoff.failures + 1})")
            self.last_activity = time.monotonic()
            if not backoff.failed():
                if self._stop.is_set():
                    return None
                raise StreamFailure(f"{message} (retried for {backoff.failing_for_s:.0f} s)", kind)

    def _start_query(self, spark, starts: dict[int, int]):
        """``readStream.format("kafka")`` from ``starts`` (or the checkpoint, when it resumes exactly there),
        ``trigger(processingTime)``, ``foreachBatch``: one Delta commit per micro-batch."""
        from ingest_platform.engines.spark.engine import kafka_source_options

        dataset = self.dataset
        why = disagreement(resume_offsets(self.checkpoint, dataset.topic), starts)
        if why is not None and self.checkpoint.exists():
            self.log.info(f"{dataset.name}: not resuming from the Spark checkpoint {self.checkpoint} ({why}); "
                          "starting from the ledger")  # fmt: skip
            discard(self.checkpoint)
        self.resumed = why is None
        options = kafka_source_options(self.kafka)
        options["failOnDataLoss"] = "true" if dataset.on_data_loss == "fail" else "false"
        reader = (
            spark.readStream.format("kafka")
            .options(**options)
            .option("subscribe", dataset.topic)
            .option("startingOffsets", json.dumps({dataset.topic: {str(p): o for p, o in sorted(starts.items())}}))
        )
        if dataset.max_records_per_run:
            reader = reader.option("maxOffsetsPerTrigger", str(dataset.max_records_per_run))
        self._stopping.clear()
        self._batch_error = None
        self.queries += 1
        query = (
            reader.load()
            .writeStream.queryName(f"ingest-{dataset.name}-{self.session}")
            .option("checkpointLocation", str(self.checkpoint))
            .trigger(processingTime=f"{self.trigger_s:g} seconds")
            .foreachBatch(self._foreach_batch)
            .start()
        )
        self.log.info(f"{dataset.name}: Spark streaming query on {dataset.topic} from "
                      + ", ".join(f"[{p}] {o}" for p, o in sorted(starts.items()))
                      + f" (trigger {self.trigger_s:g} s, checkpoint {self.checkpoint})")  # fmt: skip
        return query

    def _watch(self, query) -> tuple[str, str] | None:
        """Until a stop request (None, after stopping the query) or the query's failure (kind, message)."""
        next_lag = 0.0
        while True:
            if self._stop.wait(WATCH_S):
                self._stop_query(query)
                return None
            if not query.isActive:
                return self._failure(query)
            self.last_activity = time.monotonic()
            if self._group_due:
                self._group_due = False
                if self._group is None:
                    self._group = GroupOffsetCommitter(self.kafka, self.dataset.group_id, self.dataset.topic, self.log)
                self._group.commit({p: o + 1 for p, o in self._committed.items()}, f"dataset '{self.dataset.name}'")
                next_lag = 0.0
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + self.settings.metadata_refresh_s
                self._update_lag()

    def _stop_query(self, query) -> None:
        """SIGTERM/stop: no new micro-batch commits; the one in flight finishes (by the drain deadline); then the
        query stops. A batch Spark starts meanwhile commits nothing (the next start discards the checkpoint)."""
        self._stopping.set()
        remaining = max(0.0, self._drain_deadline - time.monotonic())
        got = self._batch_lock.acquire(timeout=remaining if remaining != float("inf") else -1)
        if got:
            self._batch_lock.release()
        else:
            self.log.warning(f"{self.dataset.name}: stopping with a micro-batch commit still running; it lands whole "
                             "or not at all, and the next start resumes from the ledger")  # fmt: skip
        try:
            query.stop()
        except Exception as error:  # noqa: BLE001 - stopping must not fail the stop
            self.log.warning(f"{self.dataset.name}: stopping the Spark query: {error}")

    def _failure(self, query) -> tuple[str, str]:
        """Classify why the query ended: the micro-batch's own error when it raised one, else Spark's."""
        from ingest_platform.engines.spark.micro_batch import LedgerRewoundError
        from ingest_platform.engines.spark.transaction import headline

        error = self._batch_error
        name = self.dataset.name
        if isinstance(error, LedgerRewoundError | ConcurrentWriterError):
            return "lake", str(error)  # the ledger moved under the query: it restarts from the ledger
        if isinstance(error, LakeSchemaError):
            raise StreamFailure(str(error), "lake")
        if isinstance(error, IngestError):
            raise StreamFailure(str(error), "decode")
        if isinstance(error, LakeAccessError | LakeWriteError):  # our own messages: they say what and where
            return "lake", f"dataset '{name}': the micro-batch commit failed: {error}"
        if isinstance(error, _RETRIABLE):  # deltalake's or the OS's own error: its first line, with the table
            return "lake", (f"dataset '{name}': the micro-batch commit to {self.uri} failed ({type(error).__name__}: "
                            f"{headline(error)[:300]}); nothing of the micro-batch was recorded, the query restarts "
                            "from the ledger")  # fmt: skip
        spark_error = query.exception()
        text = str(spark_error or error or "the query stopped")
        first = next((line.strip() for line in text.splitlines() if line.strip()), text)[:500]
        if "KAFKA_DATA_LOSS" in text or "data may have been lost" in text.lower():
            raise StreamFailure(
                f"dataset '{name}': records of {self.dataset.topic} were deleted by Kafka retention before they were "
                f"ingested ({first}); on_data_loss: fail stops the stream. Nothing was committed past the ledger.",
                "data_loss",
            )
        kind = "kafka" if "kafka" in text.lower() else "internal"
        return kind, f"dataset '{name}': the Spark streaming query failed: {first}"

    # -- a micro-batch (on Spark's callback thread) ----------------------------------------------------------------

    def _foreach_batch(self, frame, batch_id: int) -> None:
        from ingest_platform.engines.spark.micro_batch import commit_micro_batch

        with self._batch_lock:
            if self._stopping.is_set():
                return
            self._batch_started = time.monotonic()
            self._seq += 1
            metadata = {"run_id": f"{self.session}-{self.dataset.name}-{self._seq}", "stream": self.session,
                        "started_at": round(time.time(), 3), "trigger_interval_s": self.trigger_s,
                        "spark_batch_id": int(batch_id)}  # fmt: skip
            try:
                done = commit_micro_batch(self._engine, self.dataset, frame, metadata, self._seen, self._partitions,
                                          self._data_loss)
            except BaseException as error:
                self._batch_error = error
                self.metrics.batches.labels(*self.labels, "failed").inc()
                raise
            finally:
                started, self._batch_started = self._batch_started, None
                self.last_activity = time.monotonic()
            if done is not None:
                self._after_commit(done, started)

    def _after_commit(self, done, started: float) -> None:
        dataset, metrics, labels, report = self.dataset, self.metrics, self.labels, done.report
        duration = time.monotonic() - started
        self.last_batch_s = duration
        self.commits += 1
        sample = batch_latency(done.timestamps_ms, int(done.committed_at.timestamp() * 1000))
        metrics.committed(labels, report.records, report.bytes_read, report.dead_lettered, report.files_written,
                          done.committed_at.timestamp(), done.version, duration, sample)  # fmt: skip
        self._committed.update({p: last for p, (_, last) in done.ranges.items()})
        self._group_due = True
        if self._backoff is not None:
            self._backoff.succeeded()
        if self.on_commit is None:
            return
        event = CommitEvent(
            dataset=dataset.name, pipeline=dataset.pipeline, topic=dataset.topic, table_uri=self.uri,
            version=done.version, records=report.records, applied=report.applied, rows=report.rows_written,
            skipped=report.skipped, dead_letters=report.dead_lettered,
            dlq_version=report.dlq_commits[-1] if report.dlq_commits else None, bytes=report.bytes_read,
            files=report.files_written, bytes_written=report.bytes_written, rows_inserted=report.rows_inserted,
            rows_updated=report.rows_updated, rows_deleted=report.rows_deleted, ranges=dict(done.ranges),
            latency_p50_s=sample.p50_s, latency_p99_s=sample.p99_s,
            batch_opened_at=datetime.fromtimestamp(time.time() - duration, timezone.utc),
            committed_at=done.committed_at, commit_duration_s=duration,
        )  # fmt: skip
        try:
            self.on_commit(event)
        except Exception:  # noqa: BLE001 - the caller's callback must not break the stream
            metrics.error(dataset, "internal")
            self.log.exception(f"{dataset.name}: the on_commit callback failed (the commit itself succeeded)")

    # -- monitoring --------------------------------------------------------------------------------------------

    def _update_lag(self) -> None:
        """``kafka_consumer_lag_sum``: log ends (one request, with a deadline) minus the ledger + 1."""
        if not self._partitions:
            return
        try:
            marks = watermarks(self._consumer, self.dataset.topic, self._partitions, REQUEST_TIMEOUT_S)
        except KafkaReadError as error:
            self.metrics.error(self.dataset, "kafka")
            self._log_warning("kafka", f"{self.dataset.name}: {error}")
            return
        lag = sum(max(0, high - (max(self._committed.get(p, -1), self._seen.get(p, -1)) + 1))
                  for p, (_, high) in marks.items())  # fmt: skip
        self.metrics.lag.labels(*self.labels).set(lag)
