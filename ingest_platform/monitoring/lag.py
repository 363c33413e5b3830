"""Consumer lag of a dataset from offsets alone, its Burrow-style status over a window, and when to run.

Pure functions of offsets, ledgers and a small window of past samples, tested without Kafka or Dagster.
docs/DESIGN.md §7 states the rules:

* **Position** per partition = ledger + 1; for a partition the table has never seen, 0 on a table with a
  ledger (added to the topic later) and the earliest available offset on a table without one; never below
  the earliest offset (records deleted by retention are a gap, reported apart, not lag) and never above the
  log end (a topic behind the ledger is reported as reset). Lag = log end − position, per partition and in
  total. Caught up means lag 0 by the ledger.
* **Window**: per dataset, samples ``(time, total log end, total lag)`` of the last ``window_s`` seconds, at
  most ``MAX_SAMPLES`` (spaced at least window_s / MAX_SAMPLES apart), plus the time the ledger last moved.
* **Status**, first rule that holds: lag 0 → OK; the ledger has not moved for longer than the window → STOP;
  a run is due and the position has not moved over samples spanning at least half the window → STALL; lag
  grew at every sample over at least 3 samples (and the position moved or a run is due) → WARN; else OK.
* **Age of the oldest unconsumed record**: when the topic's total log end stood where the table's total
  position stands now, interpolated between samples; beyond the oldest sample extrapolated with the window's
  produce rate; with no production in the window, at least the window's span. Unknown on the first sample.
* **Due**: lag ≥ ``lag_threshold``, or the oldest unconsumed record would be older than ``slo.latency_s`` by
  the next tick (age + tick interval ≥ latency).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

OK, WARN, STALL, STOP = "OK", "WARN", "STALL", "STOP"
#: Status as a number, so the UI plots it: 0 OK, 1 WARN, 2 STALL, 3 STOP.
STATUS_CODES = {OK: 0, WARN: 1, STALL: 2, STOP: 3}
#: Default window (Burrow evaluates its last 10 commits; 10 ticks of Dagster's default 30 s interval).
WINDOW_S = 300.0
MAX_SAMPLES = 10


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    earliest: int
    end: int  # log-end offset (high watermark)
    position: int  # next offset the table will read
    lag: int
    lost: tuple[int, int] | None = None  # (first, last) offsets deleted by retention before ingestion
    reset: bool = False  # the ledger is ahead of the log end: topic recreated or truncated


@dataclass(frozen=True)
class DatasetLag:
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def end_total(self) -> int:
        return sum(p.end for p in self.partitions)

    @property
    def by_partition(self) -> dict[int, int]:
        return {p.partition: p.lag for p in self.partitions}

    @property
    def gaps(self) -> dict[int, tuple[int, int]]:
        return {p.partition: p.lost for p in self.partitions if p.lost is not None}

    @property
    def reset(self) -> list[int]:
        return [p.partition for p in self.partitions if p.reset]


def dataset_lag(ledger: Mapping[int, int], marks: Mapping[int, tuple[int, int]]) -> DatasetLag:
    """Lag per partition from the table's ledger and the topic's ``{partition: (earliest, log end)}``."""
    result = []
    for partition, (earliest, end) in sorted(marks.items()):
        # Never seen: a new table starts at the earliest offset; a partition added later starts at 0 (§2).
        start = ledger[partition] + 1 if partition in ledger else (0 if ledger else earliest)
        lost = (start, earliest - 1) if start < earliest else None
        position = min(max(start, earliest), end)
        result.append(PartitionLag(partition, earliest, end, position, end - position, lost, start > end))
    return DatasetLag(tuple(result))


@dataclass(frozen=True)
class Sample:
    t: float
    end: int  # total log-end offset over the topic's partitions
    lag: int  # total lag

    @property
    def position(self) -> int:
        return self.end - self.lag


@dataclass
class Window:
    """What the sensor remembers of one dataset between ticks (kept in the sensor's JSON cursor)."""

    samples: list[Sample] = field(default_factory=list)  # oldest first
    ledger_sum: int | None = None  # sum of the ledger's offsets at the last tick
    moved_at: float | None = None  # when the ledger last moved (its commit time), or when first seen
    topic_id: str | None = None
    recreated: str | None = None  # the topic id the table's ledger belongs to, once the topic was recreated

    def to_json(self, now: float) -> dict:
        """Compact: sample times as seconds before ``now``, log ends as the distance to the newest one."""
        newest = self.samples[-1].end if self.samples else 0
        data: dict = {"w": [[round(now - s.t), newest - s.end, s.lag] for s in self.samples], "e": newest}
        for key, value in (("l", self.ledger_sum), ("m", _round(self.moved_at)), ("i", self.topic_id),
                           ("r", self.recreated)):  # fmt: skip
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping, saved_at: float) -> Window:
        """The window ``to_json(saved_at)`` wrote (``saved_at``: the tick that wrote it, kept in the cursor)."""
        newest = int(data.get("e", 0))
        samples = [Sample(saved_at - dt, newest - dend, lag) for dt, dend, lag in data.get("w", [])]
        return cls(samples, data.get("l"), data.get("m"), data.get("i"), data.get("r"))


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


@dataclass(frozen=True)
class Evaluation:
    lag: DatasetLag
    status: str
    reason: str
    age_s: float | None
    due: list[str]  # why a run is due (empty: not due)
    window: Window  # the updated window, for the next tick


def evaluate(
    lag: DatasetLag,
    ledger: Mapping[int, int],
    previous: Window | None,
    now: float,
    *,
    lag_threshold: int | None,
    latency_s: float,
    interval_s: float,
    last_commit_s: float | None = None,
    topic_id: str | None = None,
    window_s: float = WINDOW_S,
) -> Evaluation:
    """One tick for one dataset: status, age estimate, whether a run is due, and the window to keep."""
    window = Window() if previous is None else Window(
        list(previous.samples), previous.ledger_sum, previous.moved_at, previous.topic_id, previous.recreated
    )  # fmt: skip
    current = Sample(now, lag.end_total, lag.total)
    if window.samples and current.end < window.samples[-1].end:
        window.samples = []  # the log end went backwards: a recreated topic; old samples mean nothing now
    _track_topic(window, topic_id, ledger)
    ledger_sum = sum(ledger.values())
    if window.ledger_sum is None or ledger_sum != window.ledger_sum:
        # The ledger moved (or is seen for the first time): take the table's latest commit time.
        window.moved_at = min(last_commit_s, now) if last_commit_s is not None else now
    window.ledger_sum = ledger_sum
    window.samples = [s for s in window.samples if now - s.t <= window_s]
    samples = window.samples + [current]
    age = oldest_age_s(samples, current.position)
    due = due_reasons(lag.total, age, lag_threshold, latency_s, interval_s)
    status, reason = burrow_status(samples, window.moved_at, now, window_s, bool(due))
    if not window.samples or now - window.samples[-1].t >= window_s / MAX_SAMPLES:
        window.samples.append(current)
    else:
        window.samples[-1] = Sample(window.samples[-1].t, current.end, current.lag)
    window.samples = window.samples[-MAX_SAMPLES:]
    return Evaluation(lag, status, reason, age, due, window)


def _track_topic(window: Window, topic_id: str | None, ledger: Mapping[int, int]) -> None:
    """A new topic id under a table that holds offsets means the topic was deleted and recreated.

    The mark stays until the table holds no offsets any more (deleted or replaced by an operator).
    """
    if not ledger:
        window.recreated = None
    elif topic_id and window.topic_id and topic_id != window.topic_id and window.recreated is None:
        window.recreated = window.topic_id
    if topic_id is not None:
        window.topic_id = topic_id


def oldest_age_s(samples: list[Sample], position: int) -> float | None:
    """Estimated age of the record at the table's total position (docs/DESIGN.md §7); None when unknown."""
    now = samples[-1]
    if position >= now.end:
        return 0.0
    for older, newer in zip(reversed(samples[:-1]), reversed(samples)):
        if older.end <= position:
            produced = newer.end - older.end
            share = (position - older.end) / produced if produced else 0.0
            return max(0.0, float(now.t - (older.t + share * (newer.t - older.t))))
    if len(samples) < 2:
        return None
    first = samples[0]
    span = now.t - first.t
    rate = (now.end - first.end) / span if span > 0 else 0.0
    if rate <= 0:
        return float(span)  # nothing produced in the window: at least this old
    return float(span + (first.end - position) / rate)


def due_reasons(
    lag: int, age_s: float | None, lag_threshold: int | None, latency_s: float, interval_s: float
) -> list[str]:
    reasons = []
    if lag <= 0:
        return reasons
    if lag_threshold is not None and lag >= lag_threshold:
        reasons.append(f"lag {lag} >= lag_threshold {lag_threshold}")
    if age_s is not None and age_s + interval_s >= latency_s:
        reasons.append(
            f"oldest unconsumed record ~{age_s:.0f} s old; by the next tick ({interval_s:.0f} s) it would exceed "
            f"the latency SLO of {latency_s:.0f} s"
        )
    return reasons


def burrow_status(
    samples: list[Sample], moved_at: float | None, now: float, window_s: float, due: bool
) -> tuple[str, str]:
    """OK / WARN / STALL / STOP and why (docs/DESIGN.md §7); ``samples`` end with the current one."""
    current = samples[-1]
    if current.lag == 0:
        return OK, "caught up (lag 0 by the ledger)"
    if moved_at is not None and now - moved_at > window_s:
        return STOP, f"lag {current.lag} and no commit for {now - moved_at:.0f} s (window {window_s:.0f} s)"
    span = now - samples[0].t
    unmoved = all(s.position == current.position for s in samples)
    if due and len(samples) >= 2 and unmoved and span >= window_s / 2:
        return STALL, f"a run is due but the position has not moved for {span:.0f} s (lag {current.lag})"
    moved = not unmoved
    growing = len(samples) >= 3 and all(b.lag >= a.lag for a, b in zip(samples, samples[1:]))
    if growing and current.lag > samples[0].lag and (moved or due):
        return WARN, f"lag grew from {samples[0].lag} to {current.lag} over {span:.0f} s"
    if moved:
        return OK, f"lag {current.lag}, position moving"
    return OK, f"lag {current.lag}, " + ("a run is due" if due else "not due yet")
