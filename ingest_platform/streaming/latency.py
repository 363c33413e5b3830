"""Event -> commit latency of a whole batch at once, with Arrow (no per-record Python calls).

The stream records ``ingestion_processing_duration_seconds`` per record (docs/DESIGN.md §11): the Delta
commit time minus the Kafka record timestamp. At 100K records/s, 100K ``Histogram.observe()`` calls per
second would cost a core; instead each commit adds its bucket counts, computed by a few vectorised
comparisons, to a histogram collector (``metrics.LatencyHistogram``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

#: The histogram's upper bounds, seconds (DESIGN §11).
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class LatencySample:
    """One commit's latencies: cumulative counts per bucket (``le``), total count and sum, p50 and p99."""

    cumulative: tuple[int, ...]  # len(LATENCY_BUCKETS): records with latency <= each bound
    count: int
    total_s: float
    p50_s: float | None
    p99_s: float | None


def batch_latency(timestamps_ms: Sequence[int], committed_ms: int, buckets=LATENCY_BUCKETS) -> LatencySample:
    """Latency of records with Kafka timestamps ``timestamps_ms`` committed at ``committed_ms``.

    Records without a timestamp (-1) are left out. Clock skew can make a latency negative: it is kept (it
    lands in the first bucket), so counts still equal records.
    """
    stamps = pa.array(timestamps_ms, pa.int64())
    stamps = stamps.filter(pc.greater_equal(stamps, 0))
    if len(stamps) == 0:
        return LatencySample(tuple(0 for _ in buckets), 0, 0.0, None, None)
    seconds = pc.divide(pc.cast(pc.subtract(pa.scalar(committed_ms, pa.int64()), stamps), pa.float64()), 1000.0)
    cumulative = tuple(int(pc.sum(pc.less_equal(seconds, bound)).as_py() or 0) for bound in buckets)
    p50, p99 = pc.quantile(seconds, q=[0.5, 0.99], interpolation="linear").to_pylist()
    return LatencySample(cumulative, len(seconds), float(pc.sum(seconds).as_py()), p50, p99)
