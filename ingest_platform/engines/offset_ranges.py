"""Which offsets a run reads: from the table's ledger to the high watermarks captured at run start.

Pure functions of offsets, so they are tested without a broker. docs/DESIGN.md §2 states the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class OffsetRangeError(RuntimeError):
    """The ledger and the topic disagree: data was lost to retention, or the topic was recreated."""


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # first offset to read
    end: int  # exclusive; the high watermark captured at run start, or less when capped

    @property
    def count(self) -> int:
        return self.end - self.start


def start_offsets(
    dataset: str,
    topic: str,
    ledger: Mapping[int, int],
    marks: Mapping[int, tuple[int, int]],
    on_data_loss: str = "fail",
    data_loss: dict[int, tuple[int, int]] | None = None,
) -> dict[int, int]:
    """First offset to read per partition; fails loudly on a retention gap or a reset topic.

    A partition the ledger has no entry for starts at its earliest offset only on a table without a ledger
    (a new table over an existing topic begins where the topic begins: not loss). On a table that has a
    ledger such a partition was added to the topic later, so it starts at 0 by definition, and records
    already deleted below its earliest offset are a retention gap like any other (docs/DESIGN.md §2).

    With ``on_data_loss="skip"`` a retention gap starts the partition at its earliest available offset instead
    and records the lost range ``(first lost, last lost)`` in ``data_loss`` (for the commit's run metadata).
    A reset topic fails whatever ``on_data_loss`` says.
    """
    starts: dict[int, int] = {}
    lost: list[str] = []
    reset: list[str] = []
    for partition, (earliest, high) in sorted(marks.items()):
        if partition not in ledger and not ledger:
            starts[partition] = earliest
            continue
        start = ledger.get(partition, -1) + 1
        if start < earliest and on_data_loss == "skip" and data_loss is not None:
            data_loss[partition] = (start, earliest - 1)
            start = earliest
        elif start < earliest:
            lost.append(f"{topic}[{partition}] offsets {start}..{earliest - 1} ({earliest - start} records)")
        elif start > high:
            reset.append(f"{topic}[{partition}]: table holds up to offset {start - 1}, topic ends at {high}")
        starts[partition] = start
    if reset:
        raise OffsetRangeError(
            f"dataset '{dataset}': the topic is behind the table's offset ledger (deleted and recreated, "
            "or truncated?): " + "; ".join(reset) + ". Nothing was written; the ledger is never rewound silently."
        )
    if lost:
        raise OffsetRangeError(
            f"dataset '{dataset}': records were deleted by Kafka retention before they were ingested: "
            + "; ".join(lost)
            + ". Nothing was written. Re-produce the data, or accept the loss explicitly (on_data_loss: skip) "
            "before re-running."
        )
    return starts


def plan_ranges(starts: Mapping[int, int], highs: Mapping[int, int], cap: int) -> list[PartitionRange]:
    """Ranges ``[start, high)`` per partition, sharing ``cap`` records fairly (water-filling) when capped.

    Partitions with less lag than an even share take all of theirs; the rest split what is left evenly,
    so one hot partition cannot starve the others and the total never exceeds ``cap``.
    """
    lags = {p: max(0, highs[p] - starts[p]) for p in starts}
    if sum(lags.values()) <= cap:
        takes = lags
    else:
        takes, remaining = {}, cap
        ordered = sorted(lags, key=lambda p: (lags[p], p))
        for index, partition in enumerate(ordered):
            share = remaining // (len(ordered) - index)
            takes[partition] = min(lags[partition], share)
            remaining -= takes[partition]
    return [PartitionRange(p, starts[p], starts[p] + takes[p]) for p in sorted(starts)]
