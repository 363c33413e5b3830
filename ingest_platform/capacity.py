"""The tuning guide's capacity formulas, and the rule ``engine: auto`` follows (docs/DESIGN.md §6).

Everything here is pure arithmetic over a dataset's ``expected`` load and ``PlannerSettings``; the
defaults are the guide's (shared/seed/ingestion-performance-guide.md):

* Kafka partitions  = ceil(peak records/s / per-partition throughput)     (100,000 / 1,000 = 100)
* executor-seconds  = peak records/s × processing time / executor capacity (100,000 × 30 / 1,000 = 3,000)
* executors         = ceil(executor-seconds / batch interval)              (3,000 / 30 s = 100)
* shuffle partitions = shuffle factor (2–3) × cores                        (the guide's 400 = 2 × 200 cores)
* files per batch   = max(1, int(data per batch / target file size))       (the guide's ``coalesce`` rule)

The guide's "processing time" is the trigger interval (``Trigger.ProcessingTime("30 seconds")``): each batch
holds ``batch_interval_s`` seconds of data and must finish before the next one starts, so the batch interval
cancels out of the executor count (= peak / executor capacity); it still decides batch and file sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ingest_platform.catalog import Dataset

MB = 1024 * 1024

#: The embedded engine's measured rate (benchmarks/results/ingest_bench.json, 2 cores, 402-byte JSON records):
#: 158,374 records/s through the asset, i.e. 158,374 × 402.3 B ≈ 60.8 MB/s of JSON (MB = 2**20 B, as the guide).
EMBEDDED_MEASURED_RPS = 158_374
EMBEDDED_MEASURED_MB_S = 60.8


@dataclass(frozen=True)
class PlannerSettings:
    """Planner inputs; every default is the guide's (or, for the embedded engine, our benchmark's)."""

    #: Records/s one Kafka partition sustains ("1,000 records/sec per partition").
    partition_throughput_rps: float = 1000
    #: Records/s one Spark executor processes ("Executor Capacity: 1,000 records/sec").
    executor_capacity_rps: float = 1000
    #: Micro-batch trigger interval (``Trigger.ProcessingTime("30 seconds")``).
    batch_interval_s: float = 30
    #: Seconds of data one batch holds ("Processing Time: 30 seconds"); None = the batch interval.
    processing_time_s: float | None = None
    #: Cores per executor (the guide's cluster sizing: ``executor.cores: 5``).
    executor_cores: int = 5
    #: Shuffle partitions per core (the guide: "2-3x number of cores").
    shuffle_factor: float = 2
    #: Target Parquet file size in MB (the guide's 256 MB block / max file size), clamped into each
    #: dataset's ``slo.file_size_mb`` range; None = 256 clamped.
    target_file_size_mb: float | None = None
    #: Upper bound of dynamic allocation (``maxExecutors: 500``): more executors than this is flagged.
    max_executors: int = 500
    #: What one embedded process sustains (measured) and the share of it a dataset may plan to use.
    embedded_capacity_rps: float = EMBEDDED_MEASURED_RPS
    embedded_capacity_mb_s: float = EMBEDDED_MEASURED_MB_S
    embedded_headroom: float = 0.5

    def __post_init__(self) -> None:
        for name in ("partition_throughput_rps", "executor_capacity_rps", "batch_interval_s", "shuffle_factor",
                     "embedded_capacity_rps", "embedded_capacity_mb_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"planner setting {name} must be > 0 (got {getattr(self, name)!r})")
        if self.executor_cores < 1 or self.max_executors < 1:
            raise ValueError("planner settings executor_cores and max_executors must be >= 1")
        if not 0 < self.embedded_headroom <= 1:
            raise ValueError(f"planner setting embedded_headroom must be in (0, 1] (got {self.embedded_headroom!r})")
        if self.processing_time_s is not None and not self.processing_time_s > 0:
            raise ValueError(f"planner setting processing_time_s must be > 0 (got {self.processing_time_s!r})")
        if self.target_file_size_mb is not None and not self.target_file_size_mb > 0:
            raise ValueError(f"planner setting target_file_size_mb must be > 0 (got {self.target_file_size_mb!r})")

    @property
    def processing_s(self) -> float:
        return self.processing_time_s if self.processing_time_s is not None else self.batch_interval_s


DEFAULT_SETTINGS = PlannerSettings()
#: The guide's default target file size (Parquet block size, ``hoodie.parquet.max.file.size``): 256 MB.
DEFAULT_TARGET_FILE_MB = 256.0


# ---------------------------------------------------------------------------------------------------------
# The formulas


def kafka_partitions(target_rps: float, partition_throughput_rps: float = 1000) -> int:
    """Target throughput / per-partition throughput, rounded up, at least 1 (100,000 / 1,000 = 100)."""
    _positive(partition_throughput_rps=partition_throughput_rps)
    return max(1, math.ceil(_clean(target_rps / partition_throughput_rps)))


def executor_seconds(peak_rps: float, processing_time_s: float, executor_capacity_rps: float) -> float:
    """(Peak × processing time) / executor capacity ((100,000 × 30) / 1,000 = 3,000 executor-seconds)."""
    _positive(executor_capacity_rps=executor_capacity_rps)
    return peak_rps * processing_time_s / executor_capacity_rps


def executors(peak_rps: float, processing_time_s: float, executor_capacity_rps: float, batch_interval_s: float) -> int:
    """Executor-seconds per batch spread over one batch interval, rounded up, at least 1 (3,000 / 30 = 100)."""
    _positive(batch_interval_s=batch_interval_s)
    work = executor_seconds(peak_rps, processing_time_s, executor_capacity_rps)
    return max(1, math.ceil(_clean(work / batch_interval_s)))


def shuffle_partitions(cores: int, factor: float = 2) -> int:
    """``spark.sql.shuffle.partitions`` = factor (the guide's 2–3) × total executor cores, at least 1."""
    return max(1, math.ceil(_clean(factor * cores)))


def files_per_batch(data_bytes: float, target_file_bytes: float) -> int:
    """The guide's ``math.max(1, (dataSize / targetFileSize).toInt)``: files of at least the target size."""
    _positive(target_file_bytes=target_file_bytes)
    return max(1, int(_clean(data_bytes / target_file_bytes)))


def target_file_mb(dataset: Dataset, settings: PlannerSettings = DEFAULT_SETTINGS) -> float:
    """The planner's target file size, clamped into the dataset's ``slo.file_size_mb`` range."""
    wanted = settings.target_file_size_mb or DEFAULT_TARGET_FILE_MB
    return min(max(wanted, dataset.slo.file_size_mb.min), dataset.slo.file_size_mb.max)


# ---------------------------------------------------------------------------------------------------------
# Engine recommendation (``engine: auto``)


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # "embedded" | "spark"
    reason: str


def engine_choice(
    peak_rps: float | None, record_bytes: int | None, settings: PlannerSettings = DEFAULT_SETTINGS
) -> EngineChoice:
    """The rule behind ``engine: auto`` (docs/DESIGN.md §6).

    embedded while the expected peak uses at most ``embedded_headroom`` (50 %) of what one embedded process
    sustains, in records/s and in MB/s; spark above that. Half, so that after an outage the backlog drains at
    least as fast as it built up (capacity − peak ≥ peak) and variation in record shape has room. Above 100 %
    no single embedded process can keep up at all. No ``expected`` load: embedded (nothing says it is big).
    """
    if peak_rps is None:
        return EngineChoice("embedded", "no expected load declared: embedded (declare expected.peak_rps to plan)")
    limit_rps = settings.embedded_headroom * settings.embedded_capacity_rps
    share_rps = peak_rps / settings.embedded_capacity_rps
    mb_s = peak_rps * record_bytes / MB if record_bytes else 0.0
    share_mb = mb_s / settings.embedded_capacity_mb_s
    share = max(share_rps, share_mb)
    what = (f"{_num(peak_rps)} records/s ({mb_s:,.1f} MB/s) is {share:.0%} of one embedded process "
            f"({_num(settings.embedded_capacity_rps)} records/s, {settings.embedded_capacity_mb_s:g} MB/s)")
    if share > 1:
        return EngineChoice("spark", f"{what}: no single embedded process can keep up")
    if share > settings.embedded_headroom:
        return EngineChoice(
            "spark", f"{what}: above the {settings.embedded_headroom:.0%} headroom limit ({_num(limit_rps)} records/s)"
        )
    return EngineChoice("embedded", f"{what}: within the {settings.embedded_headroom:.0%} headroom limit")


def recommend_engine(dataset: Dataset, settings: PlannerSettings = DEFAULT_SETTINGS) -> str:
    """``"embedded"`` or ``"spark"`` for a dataset (what ``engine: auto`` resolves to)."""
    expected = dataset.expected
    choice = engine_choice(expected.peak_rps if expected else None, expected.record_bytes if expected else None,
                           settings)
    return choice.engine


# ---------------------------------------------------------------------------------------------------------
# Per-dataset plan


@dataclass(frozen=True)
class DatasetPlan:
    dataset: str
    topic: str
    basis: str  # "expected" (catalog's expected load) or "slo" (slo.throughput_rps, no expected load)
    peak_rps: float
    record_bytes: int | None
    partitions: int
    executor_seconds: float
    executors: int
    cores: int
    shuffle_partitions: int
    batch_mb: float | None
    target_file_mb: float
    files_per_batch: int | None
    file_mb: float | None
    engine: str
    configured_engine: str
    engine_reason: str
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def plan_dataset(dataset: Dataset, settings: PlannerSettings = DEFAULT_SETTINGS) -> DatasetPlan:
    """Partitions, executors, shuffle partitions, files per batch and the engine for one dataset.

    Without ``expected`` the target throughput is ``slo.throughput_rps`` and the data size is unknown (no
    files per batch); the engine is embedded.
    """
    expected = dataset.expected
    peak = expected.peak_rps if expected else dataset.slo.throughput_rps
    record_bytes = expected.record_bytes if expected else None
    n_executors = executors(peak, settings.processing_s, settings.executor_capacity_rps, settings.batch_interval_s)
    cores = n_executors * settings.executor_cores
    target_mb = target_file_mb(dataset, settings)
    notes: list[str] = []
    batch_mb = files = file_mb = None
    if record_bytes is not None:
        batch_bytes = peak * record_bytes * settings.processing_s
        batch_mb = batch_bytes / MB
        files = files_per_batch(batch_bytes, target_mb * MB)
        file_mb = batch_mb / files
        floor = dataset.slo.file_size_mb.min
        if file_mb < floor:
            seconds = math.ceil(floor * MB / (peak * record_bytes))
            notes.append(
                f"a {settings.processing_s:g} s batch holds {batch_mb:,.1f} MB, below the {floor:g} MB minimum file "
                f"size: batches of >= {seconds:,} s (or compaction) reach it"
            )
    else:
        notes.append("no expected load: partitions from slo.throughput_rps; declare expected.record_bytes for files")
    if n_executors > settings.max_executors:
        notes.append(f"{n_executors} executors exceed dynamic allocation's maxExecutors {settings.max_executors}")
    choice = engine_choice(peak if expected else None, record_bytes, settings)
    if dataset.engine != "auto" and dataset.engine != choice.engine:
        notes.append(f"the catalog pins engine {dataset.engine}; the planner recommends {choice.engine}")
    return DatasetPlan(
        dataset=dataset.name,
        topic=dataset.topic,
        basis="expected" if expected else "slo",
        peak_rps=peak,
        record_bytes=record_bytes,
        partitions=kafka_partitions(peak, settings.partition_throughput_rps),
        executor_seconds=executor_seconds(peak, settings.processing_s, settings.executor_capacity_rps),
        executors=n_executors,
        cores=cores,
        shuffle_partitions=shuffle_partitions(cores, settings.shuffle_factor),
        batch_mb=batch_mb,
        target_file_mb=target_mb,
        files_per_batch=files,
        file_mb=file_mb,
        engine=choice.engine,
        configured_engine=dataset.engine,
        engine_reason=choice.reason,
        notes=tuple(notes),
    )


def plan_catalog(datasets: Iterable[Dataset], settings: PlannerSettings = DEFAULT_SETTINGS) -> list[DatasetPlan]:
    return [plan_dataset(dataset, settings) for dataset in datasets]


def format_plan_table(plans: list[DatasetPlan]) -> str:
    header = (f"{'dataset':<20} {'peak rps':>10} {'partitions':>10} {'exec-s':>9} {'executors':>9} "
              f"{'shuffle':>8} {'batch MB':>9} {'files':>6} {'file MB':>8} {'engine':<9}")
    lines = [header, "-" * len(header)]
    for p in plans:
        lines.append(
            f"{p.dataset:<20} {_num(p.peak_rps):>10} {p.partitions:>10,} {_num(p.executor_seconds):>9} "
            f"{p.executors:>9,} {p.shuffle_partitions:>8,} {_opt(p.batch_mb, '{:,.1f}'):>9} "
            f"{_opt(p.files_per_batch, '{:,}'):>6} {_opt(p.file_mb, '{:,.1f}'):>8} {p.engine:<9}"
        )
    notes = [f"{p.dataset}: {note}" for p in plans for note in p.notes]
    reasons = [f"{p.dataset}: engine {p.engine}: {p.engine_reason}" for p in plans]
    return "\n".join([*lines, "", *reasons, *notes])


def _opt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _clean(value: float) -> float:
    """Round away float noise (3000.0000000004 / 30 must be 100, not 101)."""
    return round(value, 9)


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0 (got {value!r})")
