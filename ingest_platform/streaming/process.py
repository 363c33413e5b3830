"""The stream process: many datasets' loops in one process, with bounded memory (docs/DESIGN.md §10).

``StreamProcess(datasets, kafka, lake, settings, on_commit=...)`` is the API the CLI (``ingest-platform
stream``) and the Dagster layer use: ``run(stop_event)`` serves until ``stop()``, the event, SIGTERM/SIGINT
(handlers only when it runs on the main thread), ``duration_s``, or until no dataset is left running; it
returns a ``StreamOutcome`` (clean stop or the datasets that failed, with their messages). ``add`` and
``remove`` change the datasets while it runs (removal drains the dataset's in-flight commit).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest_platform.catalog import Dataset
from ingest_platform.engines.embedded.memory import bound_native_heap
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.streaming.budget import BufferBudget
from ingest_platform.streaming.commit_pool import CommitPool
from ingest_platform.streaming.events import FAILED, STOPPED, CommitEvent, DatasetState, StreamOutcome
from ingest_platform.streaming.health import liveness
from ingest_platform.streaming.loop import DatasetLoop, LoopParts, LoopSettings
from ingest_platform.streaming.metrics import StreamMetrics
from ingest_platform.streaming.retry import RetryPolicy
from ingest_platform.streaming.spark_checkpoint import CHECKPOINT_FOLDER
from ingest_platform.streaming.spark_loop import SparkStreamLoop
from ingest_platform.streaming.upkeep import TableUpkeep, UpkeepSettings

MIB = 1024 * 1024


@dataclass(frozen=True)
class StreamSettings:
    trigger_interval_s: float | None = None  # overrides every dataset's trigger_interval_s when set
    max_buffer_bytes: int | None = None  # budget of buffered record bytes; default: see buffer_budget()
    memory_limit_bytes: int | None = None  # default: the cgroup's limit, if any
    consumer_prefetch_bytes: int = 4 * MIB  # librdkafka's queue per consumer (queued.max.messages.kbytes)
    commit_threads: int = 4
    metadata_refresh_s: float = 10.0  # new partitions are picked up this often
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stuck_after_s: float | None = None  # liveness: default max(3 × trigger, MIN_STUCK_S)
    commit_stuck_after_s: float = 300.0
    stop_timeout_s: float | None = None  # drain deadline after stop; default 2 × the largest trigger - 0.5 s
    upkeep: UpkeepSettings | None = field(default_factory=UpkeepSettings)
    spark_checkpoint_root: str | None = None  # engine: spark datasets' query checkpoints; default the cache folder
    stop_on_conflict: bool = False  # sharded workers: a ledger conflict stops the dataset, no re-plan (§12)


#: Liveness floor: a loop may spend a request deadline (10 s) plus a backoff wait (up to 30 s) between polls.
MIN_STUCK_S = 45.0
#: Default buffer budget, and its share of a known memory limit (the rest: prefetch, decoding, the runtime).
DEFAULT_BUFFER_BYTES = 512 * MIB
BUFFER_SHARE_OF_LIMIT = 0.25


def cgroup_memory_limit() -> int | None:
    """The container's memory limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), if any."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def buffer_budget(settings: StreamSettings) -> tuple[int, int | None]:
    """(buffer budget, memory limit): ``max_buffer_bytes``, else a quarter of the limit, else 512 MiB."""
    limit = settings.memory_limit_bytes or cgroup_memory_limit()
    if settings.max_buffer_bytes:
        return settings.max_buffer_bytes, limit
    if limit:
        return max(16 * MIB, min(DEFAULT_BUFFER_BYTES, int(limit * BUFFER_SHARE_OF_LIMIT))), limit
    return DEFAULT_BUFFER_BYTES, limit


class StreamProcess:
    def __init__(
        self,
        datasets: Iterable[Dataset],
        kafka: KafkaConnection,
        lake: LakeLocation,
        settings: StreamSettings | None = None,
        on_commit: Callable[[CommitEvent], None] | None = None,
        on_state: Callable[[DatasetState], None] | None = None,
        metrics: StreamMetrics | None = None,
        log: logging.Logger | None = None,
        spark_session: Callable[[str], object] | None = None,
    ):
        """``spark_session(profile)`` returns the Spark session of ``engine: spark`` datasets (default: the
        profile's, started on first use)."""
        self.kafka = kafka
        self.lake = lake
        self.settings = settings or StreamSettings()
        self.on_commit = on_commit
        self.on_state = on_state
        self.metrics = metrics or StreamMetrics()
        self.log = log or logging.getLogger(__name__)
        self.spark_session = spark_session
        self.session = uuid.uuid4().hex[:12]
        bound_native_heap()  # the allocators of the memory bound, as for runs (docs/DESIGN.md §2 "Memory")
        budget, self.memory_limit = buffer_budget(self.settings)
        self.budget = BufferBudget(budget)
        self.pool: CommitPool | None = None
        self.upkeep = TableUpkeep(lake, self.settings.upkeep, self.log) if self.settings.upkeep else None
        self._loops: dict[str, DatasetLoop | SparkStreamLoop] = {}
        self._ended: dict[str, DatasetState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = False
        for dataset in datasets:
            self.add(dataset)

    # -- datasets ------------------------------------------------------------------------------------------------

    def trigger_of(self, dataset: Dataset) -> float:
        return self.settings.trigger_interval_s or dataset.trigger_interval_s

    def add(self, dataset: Dataset) -> None:
        """Serve ``dataset`` (now, when the process runs; else from ``run``). A name already served is refused."""
        with self._lock:
            current = self._loops.get(dataset.name)
            if current is not None and current.thread.is_alive():
                raise ValueError(f"dataset '{dataset.name}' is already served by this stream process")
            trigger = self.trigger_of(dataset)
            loop_settings = LoopSettings(
                trigger_interval_s=trigger,
                consumer_prefetch_bytes=self.settings.consumer_prefetch_bytes,
                metadata_refresh_s=self.settings.metadata_refresh_s,
                retry=self.settings.retry,
                stuck_after_s=self.settings.stuck_after_s or max(3 * trigger, MIN_STUCK_S),
                commit_stuck_after_s=self.settings.commit_stuck_after_s,
                stop_on_conflict=self.settings.stop_on_conflict,
            )
            parts = LoopParts(dataset, self.kafka, self.lake, loop_settings, self.metrics, self.session,
                              self._commit_hook, self.on_state, self.log)  # fmt: skip
            loop: DatasetLoop | SparkStreamLoop
            if dataset.engine == "spark":  # a Structured Streaming query (§10.10); auto and embedded stream here
                loop = SparkStreamLoop(parts, self._spark_for(dataset), self._checkpoint_root())
            else:
                loop = DatasetLoop(parts, self.budget, self._pool())
            self._loops[dataset.name] = loop
            self._ended.pop(dataset.name, None)
            if self.memory_limit:
                self.metrics.memory_limit.labels(dataset.pipeline).set(self.memory_limit)
            if self.upkeep is not None:
                self.upkeep.add(dataset)
            if self._running:
                loop.start()

    def remove(self, name: str, timeout_s: float | None = None) -> DatasetState:
        """Stop serving ``name``: its in-flight commit (and open batch, if there is time) is drained first."""
        return self.remove_many([name], timeout_s)[name]

    def remove_many(self, names: Iterable[str], timeout_s: float | None = None) -> dict[str, DatasetState]:
        """Stop serving ``names`` together: every loop drains at once, within one deadline (``timeout_s``,
        default the stop deadline), so handing over many datasets takes one drain, not one per dataset."""
        names = list(dict.fromkeys(names))
        with self._lock:
            missing = [name for name in names if name not in self._loops]
            if missing:
                raise KeyError(f"dataset(s) {', '.join(map(repr, missing))} not served by this stream process")
            loops = [self._loops.pop(name) for name in names]
        if self.upkeep is not None:
            for name in names:
                self.upkeep.remove(name)
        timeout = timeout_s if timeout_s is not None else self._stop_timeout(loops)
        deadline = time.monotonic() + timeout
        draining = [loop for loop in loops if loop.thread.is_alive() or loop.thread.ident is None]
        for loop in draining:
            loop.request_stop(deadline)
        for loop in draining:
            if loop.thread.ident is not None:
                loop.join(max(0.0, deadline - time.monotonic()) + 1)
        ended = {}
        for loop in loops:
            state = loop.state if loop.state.status == FAILED or loop.state.error_kind else DatasetState(
                loop.dataset.name, STOPPED)  # fmt: skip
            self._ended[loop.dataset.name] = ended[loop.dataset.name] = state
        return ended

    def states(self) -> dict[str, DatasetState]:
        with self._lock:
            live = {name: loop.state for name, loop in self._loops.items()}
        return {**self._ended, **live}

    def stuck(self) -> dict[str, str]:
        """Datasets whose loop looks stuck, and why (liveness)."""
        now = time.monotonic()
        with self._lock:
            loops = list(self._loops.values())
        return {loop.dataset.name: reason for loop in loops if (reason := loop.stuck(now))}

    def healthz(self) -> tuple[int, dict]:
        return liveness(self.stuck())

    # -- running -------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to stop: in-flight commits finish, then it returns (safe from any thread or a signal)."""
        self._stop.set()

    def run(self, stop_event: threading.Event | None = None, duration_s: float | None = None,
            keep_alive: bool = False) -> StreamOutcome:  # fmt: skip
        """Serve until stopped; ``keep_alive`` keeps serving (for ``add``) when no dataset is left running."""
        restore = stop_on_signals(self._stop, self.log)
        started = time.monotonic()
        reason = "stopped"
        try:
            with self._lock:  # with the snapshot: a dataset added meanwhile is started by add(), never twice
                self._running = True
                loops = list(self._loops.values())
            for loop in loops:
                loop.start()
            if self.upkeep is not None:
                self.upkeep.start()
            while True:
                if self._stop.wait(0.1) or (stop_event is not None and stop_event.is_set()):
                    break
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    reason = "duration"
                    break
                if not keep_alive and not any(loop.alive for loop in self._snapshot()):
                    reason = "no datasets left"
                    break
        finally:
            self._shutdown()
            restore()
            self._running = False
        return StreamOutcome(reason=reason, states=self.states())

    def _snapshot(self) -> list[DatasetLoop]:
        with self._lock:
            return list(self._loops.values())

    def _shutdown(self) -> None:
        loops = self._snapshot()
        timeout = self._stop_timeout(loops)
        deadline = time.monotonic() + timeout
        for loop in loops:
            loop.request_stop(deadline)
        for loop in loops:
            if loop.thread.ident is not None:
                loop.join(max(0.0, deadline - time.monotonic()) + 0.5)
        stragglers = [loop.dataset.name for loop in loops if loop.thread.is_alive()]
        if stragglers:
            self.log.warning(f"stream: {stragglers} did not stop within {timeout:.1f} s; their last commits land "
                             "whole or not at all, and the next start resumes from the ledger")  # fmt: skip
        if self.upkeep is not None:
            self.upkeep.stop()
        if self.pool is not None:
            self.pool.shutdown()

    def _stop_timeout(self, loops: list[DatasetLoop | SparkStreamLoop]) -> float:
        if self.settings.stop_timeout_s is not None:
            return self.settings.stop_timeout_s
        spark = max((loop.drain_s for loop in loops if isinstance(loop, SparkStreamLoop)), default=0.0)
        return max(self.stop_timeout([loop.trigger_s for loop in loops]), spark)

    def stop_timeout(self, triggers: Iterable[float]) -> float:
        """The drain deadline for loops with these trigger intervals: ``stop_timeout_s``, else 2 × the largest
        trigger - 0.5 s (at least 0.5 s). A Spark query's loop may need more (its ``drain_s``)."""
        if self.settings.stop_timeout_s is not None:
            return self.settings.stop_timeout_s
        return max(0.5, 2 * max(triggers, default=1.0) - 0.5)

    def served(self) -> set[str]:
        """The datasets this process holds a loop for (running, or ended and not removed)."""
        with self._lock:
            return set(self._loops)

    def _pool(self) -> CommitPool:
        if self.pool is None:
            self.pool = CommitPool(self.settings.commit_threads)
        return self.pool

    def _spark_for(self, dataset: Dataset) -> Callable[[], object]:
        """How the dataset's loop gets its Spark session (on its own thread: the JVM starts on first use)."""
        factory = self.spark_session

        def session() -> object:
            from ingest_platform.engines.spark.profiles import default_profile_name

            profile = dataset.spark_profile or default_profile_name()
            if factory is not None:
                return factory(profile)
            from ingest_platform.engines.runner import default_spark_session
            from ingest_platform.lake.storage import is_s3

            return default_spark_session(profile, s3=is_s3(self.lake.root))

        return session

    def _checkpoint_root(self) -> str:
        if self.settings.spark_checkpoint_root:
            return self.settings.spark_checkpoint_root
        from ingest_platform.engines.spark.session import cache_dir  # no pyspark import: the folder's name only

        return str(cache_dir() / CHECKPOINT_FOLDER)

    def _commit_hook(self, event: CommitEvent) -> None:
        if self.on_commit is not None:
            self.on_commit(event)


def stop_on_signals(stop: threading.Event, log: logging.Logger) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (a graceful stop), only on the main thread (never inside a Dagster op);
    returns the function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum, _frame) -> None:
        log.info(f"stream: {signal.Signals(signum).name} received; finishing in-flight commits")
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
