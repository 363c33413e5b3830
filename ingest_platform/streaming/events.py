"""What the stream process reports to its caller (the CLI, the Dagster layer): one event per commit, the
state of each dataset, and how the process ended (docs/DESIGN.md §10, "API")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

#: Dataset states: starting (planning its positions), running, stopped (cleanly: stop, removal, duration),
#: failed (an error that retrying cannot fix; the message says what and what to do).
STARTING, RUNNING, STOPPED, FAILED = "starting", "running", "stopped", "failed"
#: ``error_kind`` of a dataset STOPPED (not failed) because another writer moved its ledger, in sharded workers
#: that stop on a conflict instead of re-planning (docs/DESIGN.md §12).
CONFLICT = "conflict"


@dataclass(frozen=True)
class CommitEvent:
    """One Delta commit of a stream (the data commit; its dead letters' commit is ``dlq_version``)."""

    dataset: str
    pipeline: str  # the dataset's stream group
    topic: str
    table_uri: str
    version: int
    records: int  # Kafka records covered: applied + dead_lettered + skipped
    applied: int
    rows: int  # rows written (upserts: the last change per key)
    skipped: int  # null values (tombstones)
    dead_letters: int
    dlq_version: int | None
    bytes: int  # key + value bytes of the records
    files: int
    bytes_written: int
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    ranges: dict[int, tuple[int, int]]  # partition -> (first, last) offset this commit covers
    latency_p50_s: float | None  # Kafka record timestamp -> this commit, over the commit's records
    latency_p99_s: float | None
    batch_opened_at: datetime  # the batch's first record was polled
    committed_at: datetime
    commit_duration_s: float  # batch closed -> commit done

    def as_dict(self) -> dict:
        data = asdict(self)
        data["ranges"] = {str(p): list(r) for p, r in self.ranges.items()}
        for key in ("batch_opened_at", "committed_at"):
            data[key] = data[key].isoformat()
        return data


@dataclass(frozen=True)
class DatasetState:
    dataset: str
    status: str  # STARTING, RUNNING, STOPPED or FAILED
    error: str | None = None  # FAILED: what failed and what to do; STOPPED by a conflict: the conflict
    error_kind: str | None = None  # the ingestion_errors_total kind of the fatal error, or CONFLICT


@dataclass(frozen=True)
class StreamOutcome:
    """How ``StreamProcess.run`` ended. A crash of the process itself raises instead of returning."""

    reason: str  # "stopped" (stop() or a signal), "duration", "no datasets left"
    states: dict[str, DatasetState] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return {name: s.error or "failed" for name, s in self.states.items() if s.status == FAILED}

    @property
    def clean(self) -> bool:
        """True when no dataset stopped on an error: the supervisor's "clean stop" versus "failure"."""
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else 1
