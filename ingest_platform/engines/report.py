"""What an engine run did: the figures a materialization reports (docs/DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    first_offset: int  # first offset read this run
    last_offset: int  # last offset covered this run (inclusive); first - 1 when nothing was read
    records: int


@dataclass
class RunReport:
    dataset: str
    engine: str
    table_uri: str
    records: int = 0  # Kafka records consumed
    rows_written: int = 0
    skipped: int = 0  # records without a value (null; Debezium tombstones), covered by the ledger, not written
    applied: int = 0  # records decoded into rows (append) or changes (upsert, incl. ones a later change superseded)
    dead_lettered: int = 0  # records this run sent to <name>_dlq (records = applied + dead_lettered + skipped)
    rows_inserted: int = 0  # upsert: rows the MERGEs inserted / updated / deleted
    rows_updated: int = 0
    rows_deleted: int = 0
    dlq_commits: list[int] = field(default_factory=list)  # versions of <name>_dlq this run created
    bytes_read: int = 0  # key + value bytes consumed
    files_written: int = 0
    bytes_written: int = 0
    commits: list[int] = field(default_factory=list)  # Delta versions this run created
    partitions: list[PartitionProgress] = field(default_factory=list)
    duration_s: float = 0.0
    max_event_to_commit_lag_s: float | None = None
    lag_after: int = 0  # records left behind by max_records_per_run (known at run start)

    @property
    def records_per_s(self) -> float:
        return self.records / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def average_file_mb(self) -> float:
        return self.bytes_written / self.files_written / 1e6 if self.files_written else 0.0

    def as_dict(self) -> dict:
        data = asdict(self)
        data["records_per_s"] = round(self.records_per_s, 1)
        data["average_file_mb"] = round(self.average_file_mb, 3)
        return data


def run_outcome(topic: str, committed: list[tuple[int, Mapping[str, Sequence[int]]]]) -> str:
    """What a failed run leaves behind, for its error message: the Delta versions it committed before failing
    and the offsets each covered (``{"<partition>": [first, last]}``), or that it committed nothing."""
    if not committed:
        return "Nothing was committed by this run."
    described = "; ".join(
        f"version {version}: "
        + (", ".join(f"{topic}[{p}] {first}..{last}" for p, (first, last) in sorted(ranges.items(),
                                                                                   key=lambda item: int(item[0]))
                     if last >= first)  # an empty range only records where a partition begins
           or "no records")
        for version, ranges in committed
    )  # fmt: skip
    return (
        f"Before failing, this run committed {len(committed)} version(s), which stand and are correct (the next "
        f"run continues after them): {described}."
    )
