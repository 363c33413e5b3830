"""What changed about a dataset's topic: partitions added, topic recreated, records lost to retention, and
how many partitions its throughput calls for. Pure functions of offsets, the ledger and the last state.

docs/DESIGN.md §7 states the rules:

* **New partitions** (count above the last tick's) are read from their earliest offset (offset 0 on a new
  partition) by the next run: the ledger has no entry for them (§2, step 1). The sensor requests that run.
* **Recreated topic**: its topic id changed while the table holds offsets, or the ledger is ahead of a
  partition's log end. Reported on every tick until an operator resolves it (the table then holds no
  offsets); never re-read or skipped silently, and no run is requested for it.
* **Retention gap**: ledger + 1 below the earliest available offset (a partition the ledger has never seen
  counts from 0 once the table has a ledger: it was added to the topic after the table began). Reported
  with the exact lost ranges; a run fails with them (``on_data_loss: fail``) or skips them and records
  them in its commit (``skip``).
* **Partition recommendation**: the guide's partitions = target throughput / per-partition throughput
  (``capacity.py``), with target = the largest of ``slo.throughput_rps``, ``expected.peak_rps`` and
  the produce rate measured from the log end's growth between ticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ingest_platform.capacity import DEFAULT_SETTINGS, PlannerSettings, kafka_partitions
from ingest_platform.catalog import Dataset
from ingest_platform.monitoring.offsets import TopicOffsets


@dataclass(frozen=True)
class PartitionFindings:
    partitions: int
    previous_partitions: int | None
    new_partitions: tuple[int, ...]
    recreated: str | None  # why the topic is considered deleted and recreated, or None
    gaps: dict[int, tuple[int, int]]  # partition -> (first, last) offsets lost to retention
    produce_rps: float | None  # measured from the log end's growth since the last tick
    target_rps: float
    recommended_partitions: int

    def describe_gaps(self, topic: str) -> str:
        return "; ".join(
            f"{topic}[{p}] offsets {first}..{last} ({last - first + 1} records)"
            for p, (first, last) in sorted(self.gaps.items())
        )


def partition_findings(
    dataset: Dataset,
    offsets: TopicOffsets,
    ledger: Mapping[int, int],
    previous: Mapping | None,
    now: float,
    settings: PlannerSettings = DEFAULT_SETTINGS,
) -> tuple[PartitionFindings, dict]:
    """Findings for one dataset and the state to keep for the next tick (``{"n", "i", "e", "t", "r"}``)."""
    previous = previous or {}
    marks = offsets.marks
    before = previous.get("n")
    new = tuple(sorted(p for p in marks if before is not None and p >= before))
    old_id, recreated_from = previous.get("i"), previous.get("r")
    if not ledger:
        recreated_from = None
    elif offsets.topic_id and old_id and offsets.topic_id != old_id and recreated_from is None:
        recreated_from = old_id
    reasons = []
    if recreated_from:
        reasons.append(f"topic id changed from {recreated_from} to {offsets.topic_id} while the table holds offsets")
    ahead = [
        f"[{p}] table holds up to offset {ledger[p]}, topic ends at {end}"
        for p, (_, end) in sorted(marks.items())
        if p in ledger and ledger[p] + 1 > end
    ]
    if ahead:
        reasons.append("the ledger is ahead of the log end: " + ", ".join(ahead))
    # A partition the table has never seen starts at 0 once the table has a ledger (docs/DESIGN.md §2).
    gaps = {p: (ledger.get(p, -1) + 1, earliest - 1) for p, (earliest, _) in sorted(marks.items())
            if ledger and ledger.get(p, -1) + 1 < earliest}  # fmt: skip
    end_total = sum(end for _, end in marks.values())
    produce_rps = None
    if "e" in previous and "t" in previous and now > previous["t"] and end_total >= previous["e"] and not new:
        produce_rps = (end_total - previous["e"]) / (now - previous["t"])
    target = max(
        dataset.slo.throughput_rps,
        dataset.expected.peak_rps if dataset.expected else 0.0,
        produce_rps or 0.0,
    )
    findings = PartitionFindings(
        partitions=len(marks),
        previous_partitions=before,
        new_partitions=new if not reasons else (),
        recreated="; ".join(reasons) or None,
        gaps=gaps,
        produce_rps=produce_rps,
        target_rps=target,
        recommended_partitions=kafka_partitions(target, settings.partition_throughput_rps),
    )
    state = {"n": len(marks), "e": end_total, "t": round(now, 1)}
    if offsets.topic_id:
        state["i"] = offsets.topic_id
    if recreated_from:
        state["r"] = recreated_from
    return findings, state
