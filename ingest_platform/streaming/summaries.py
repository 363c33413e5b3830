"""Materialization summaries: a stream's commits folded into few reports (docs/DESIGN.md §10.8).

A stream on a 1 s trigger commits 86,400 times a day per dataset; Dagster's event log must grow with time, not
with that rate. ``MaterializationSummaries`` takes every ``CommitEvent`` (from any thread) and hands out, per
dataset, **one summary per commit while commits are rarer than the dataset's** ``materialization_interval_s``
**and otherwise one per interval** summarising the commits since the previous one: two summaries of one dataset
are never closer than its interval, whatever the commit rate. The first commit of a dataset is reported at
once; ``flush()`` hands out everything pending (at a stop), so no commit goes unreported.

Plain Python, no Dagster: the Dagster stream run and the external stream workers (``--report-to-dagster``)
both turn the same summaries into asset materializations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ingest_platform.catalog import Dataset
from ingest_platform.streaming.events import CommitEvent

#: A dataset the summaries were not told about is reported at the catalog's default interval.
DEFAULT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class CommitSummary:
    """The commits of one dataset since its previous summary (one commit when commits are rare)."""

    dataset: str
    pipeline: str
    topic: str
    table_uri: str
    commits: int
    first_version: int
    last_version: int
    records: int  # Kafka records covered: applied + dead_letters + skipped
    applied: int
    rows: int
    skipped: int
    dead_letters: int
    last_dlq_version: int | None
    bytes: int  # key + value bytes of the records
    files: int
    bytes_written: int
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    ranges: dict[int, tuple[int, int]]  # partition -> (first, last) offset covered by these commits
    #: Records-weighted median of the commits' median latencies (exact for one commit, close for several).
    latency_p50_s: float | None
    #: The largest of the commits' p99 latencies: an upper bound of the p99 over all their records (no more
    #: than 1 % of any commit's records are above its own p99), exact for one commit.
    latency_p99_s: float | None
    commit_duration_max_s: float
    first_batch_opened_at: datetime
    last_committed_at: datetime
    #: Seconds these commits stand for: since the previous summary's last commit (the first summary: since
    #: its first batch opened); records / window is the stream's rate over it.
    window_s: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.window_s if self.window_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            **{k: v for k, v in self.__dict__.items() if k not in ("ranges", "first_batch_opened_at",
                                                                     "last_committed_at")},
            "ranges": {str(p): list(r) for p, r in sorted(self.ranges.items())},
            "first_batch_opened_at": self.first_batch_opened_at.isoformat(),
            "last_committed_at": self.last_committed_at.isoformat(),
            "records_per_s": round(self.records_per_s, 1),
        }  # fmt: skip


def summarize(events: list[CommitEvent], previous_commit_at: datetime | None = None) -> CommitSummary:
    """One summary of ``events`` (one dataset's commits, oldest first)."""
    first, last = events[0], events[-1]
    ranges: dict[int, tuple[int, int]] = {}
    for event in events:
        for partition, (low, high) in event.ranges.items():
            known = ranges.get(partition)
            ranges[partition] = (low, high) if known is None else (min(known[0], low), max(known[1], high))
    since = previous_commit_at if previous_commit_at is not None else first.batch_opened_at
    return CommitSummary(
        dataset=first.dataset, pipeline=first.pipeline, topic=first.topic, table_uri=first.table_uri,
        commits=len(events), first_version=min(e.version for e in events), last_version=max(e.version for e in events),
        records=sum(e.records for e in events), applied=sum(e.applied for e in events),
        rows=sum(e.rows for e in events), skipped=sum(e.skipped for e in events),
        dead_letters=sum(e.dead_letters for e in events),
        last_dlq_version=next((e.dlq_version for e in reversed(events) if e.dlq_version is not None), None),
        bytes=sum(e.bytes for e in events), files=sum(e.files for e in events),
        bytes_written=sum(e.bytes_written for e in events), rows_inserted=sum(e.rows_inserted for e in events),
        rows_updated=sum(e.rows_updated for e in events), rows_deleted=sum(e.rows_deleted for e in events),
        ranges=ranges, latency_p50_s=_weighted_median([(e.latency_p50_s, e.records) for e in events]),
        latency_p99_s=max((e.latency_p99_s for e in events if e.latency_p99_s is not None), default=None),
        commit_duration_max_s=max(e.commit_duration_s for e in events),
        first_batch_opened_at=first.batch_opened_at, last_committed_at=last.committed_at,
        window_s=max(0.0, (last.committed_at - since).total_seconds()),
    )  # fmt: skip


def _weighted_median(values: list[tuple[float | None, int]]) -> float | None:
    known = sorted((v, max(1, w)) for v, w in values if v is not None)
    if not known:
        return None
    half, seen = sum(w for _, w in known) / 2, 0
    for value, weight in known:
        seen += weight
        if seen >= half:
            return value
    return known[-1][0]


@dataclass
class _Pending:
    interval_s: float
    events: list[CommitEvent] = field(default_factory=list)
    last_emitted: float | None = None  # clock() of the last summary handed out
    last_commit_at: datetime | None = None  # committed_at of the last commit reported


class MaterializationSummaries:
    """Per-dataset accumulation of commit events and the emission rule of the module docstring.

    ``add`` is called on the stream's commit threads (it only appends, under a lock); ``due`` and ``flush``
    by the one reporter (the Dagster op's thread, or the external worker's reporter thread)."""

    def __init__(self, datasets: Iterable[Dataset] = (), clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        for dataset in datasets:
            self.watch(dataset)

    def watch(self, dataset: Dataset) -> None:
        """Report ``dataset`` at its ``materialization_interval_s`` (datasets may be added while streaming)."""
        with self._lock:
            pending = self._pending.setdefault(dataset.name, _Pending(dataset.materialization_interval_s))
            pending.interval_s = dataset.materialization_interval_s

    def add(self, event: CommitEvent) -> None:
        with self._lock:
            self._pending.setdefault(event.dataset, _Pending(DEFAULT_INTERVAL_S)).events.append(event)

    def due(self, now: float | None = None) -> list[CommitSummary]:
        """Summaries of the datasets with commits whose previous summary is at least their interval old."""
        now = self.clock() if now is None else now
        with self._lock:
            ready = [p for p in self._pending.values()
                     if p.events and (p.last_emitted is None or now - p.last_emitted >= p.interval_s)]  # fmt: skip
            return [self._take(p, now) for p in ready]

    def flush(self) -> list[CommitSummary]:
        """Everything pending, whatever the intervals (the stream stopped)."""
        now = self.clock()
        with self._lock:
            return [self._take(p, now) for p in self._pending.values() if p.events]

    def pending_commits(self) -> int:
        with self._lock:
            return sum(len(p.events) for p in self._pending.values())

    @staticmethod
    def _take(pending: _Pending, now: float) -> CommitSummary:
        events = sorted(pending.events, key=lambda e: e.version)
        pending.events = []
        summary = summarize(events, pending.last_commit_at)
        pending.last_emitted = now
        pending.last_commit_at = summary.last_committed_at
        return summary
