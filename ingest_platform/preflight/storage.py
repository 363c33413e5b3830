"""The guide's checklist, storage section: file sizes, partitioning, S3A multipart and pool, compression.

docs/DESIGN.md §6 states the rules; ``ingest_platform.preflight.CHECKLIST`` lists the items in the guide's order.
"""

from __future__ import annotations

import re

from ingest_platform.capacity import MB
from ingest_platform.preflight.checklist import (
    FAIL,
    NA,
    PASS,
    Finding,
    PreflightContext,
    SparkProfile,
    _requirements,
    _size,
)

GUIDE_FILE_MB = (128, 1024)
TIME_COLUMNS = ("year", "month", "day", "hour", "date")

# ---------------------------------------------------------------------------------------------------------
# Storage


def check_file_sizes(ctx: PreflightContext) -> list[Finding]:
    low, high = GUIDE_FILE_MB
    findings = []
    for dataset in ctx.datasets:
        size = dataset.slo.file_size_mb
        problems = []
        if size.min < low:
            problems.append(f"slo.file_size_mb.min is {size.min:g} MB, below the guide's {low} MB")
        if size.max > high:
            problems.append(f"slo.file_size_mb.max is {size.max:g} MB, above the guide's {high} MB")
        if problems:
            findings.append(Finding(dataset.name, FAIL, "; ".join(problems) + " (fix it in the catalog)"))
        else:
            findings.append(Finding(dataset.name, PASS, f"{size.min:g}-{size.max:g} MB"))
    return findings


def check_partitioning(ctx: PreflightContext) -> list[Finding]:
    findings = []
    for dataset in ctx.datasets:
        columns = dataset.partition_by
        if not columns:
            findings.append(Finding(dataset.name, FAIL, "no partition_by: every query and compaction scans the whole "
                                                        "table (the guide: year/month/day/hour or date for time "
                                                        "series; source and date for CDC)"))
            continue
        if not any(c in TIME_COLUMNS for c in columns):
            findings.append(Finding(dataset.name, FAIL, f"partition_by {list(columns)} has no time column "
                                                        f"({', '.join(TIME_COLUMNS)}): partitions grow forever"))
            continue
        expected = dataset.expected
        if "hour" in columns and expected is not None:
            hour_mb = expected.peak_rps * expected.record_bytes * 3600 / MB
            floor = dataset.slo.file_size_mb.min
            if hour_mb < floor:
                findings.append(Finding(dataset.name, FAIL, f"hourly partitions hold at most {hour_mb:,.1f} MB/hour "
                                                            f"at peak, below the {floor:g} MB minimum file size: "
                                                            "partition by date instead"))
                continue
        findings.append(Finding(dataset.name, PASS, f"partition_by {list(columns)}"))
    return findings


def _s3a_profiles(ctx: PreflightContext) -> tuple[list[SparkProfile], Finding | None]:
    profiles = [p for p in ctx.spark_profiles() if not p.error]
    s3_lake = re.match(r"^s3a?://", ctx.lake_root) is not None
    uses_s3a = [p for p in profiles if any(k.startswith("spark.hadoop.fs.s3a.") for k in p.conf)]
    if not s3_lake and not uses_s3a:
        return [], Finding("lake", NA, f"the lake root is {ctx.lake_root}, not s3a://, and no Spark profile sets "
                                       "fs.s3a.*: S3A settings do not apply")
    if not profiles:
        return [], Finding("lake", NA, "no Spark profile: the embedded engine writes S3 through delta-rs' object "
                                       "store, not S3A")
    return [p for p in profiles if not p.local or p in uses_s3a], None


def _s3a_check(ctx: PreflightContext, requirements: tuple[tuple[str, str, int], ...]) -> list[Finding]:
    profiles, na = _s3a_profiles(ctx)
    if na is not None:
        return [na]
    findings = []
    for p in profiles:
        config = {k: _size(v) for k, v in p.conf.items() if k.startswith("spark.hadoop.fs.s3a.")}
        findings.append(_requirements(p.name, config, requirements, p.name))
    return findings or [Finding("deploy/spark", NA, "only local-mode Spark profiles, none using S3A")]


def check_s3a_multipart(ctx: PreflightContext) -> list[Finding]:
    return _s3a_check(ctx, (("spark.hadoop.fs.s3a.multipart.size", ">=", 128 * MB),
                            ("spark.hadoop.fs.s3a.multipart.threshold", ">=", 64 * MB)))


def check_s3a_pool(ctx: PreflightContext) -> list[Finding]:
    return _s3a_check(ctx, (("spark.hadoop.fs.s3a.connection.maximum", ">=", 200),
                            ("spark.hadoop.fs.s3a.threads.max", ">=", 64)))


def check_storage_compression(ctx: PreflightContext) -> list[Finding]:
    from ingest_platform.lake.commit import WRITER_PROPERTIES

    codec = str(WRITER_PROPERTIES.compression or "UNCOMPRESSED").upper()
    findings = [Finding("embedded engine", FAIL if codec in ("UNCOMPRESSED", "NONE") else PASS,
                        f"Parquet compression {codec} (ingest_platform.lake.commit.WRITER_PROPERTIES)")]
    for p in ctx.spark_profiles():
        if p.error:
            continue
        value = p.conf.get("spark.sql.parquet.compression.codec", "snappy")
        ok = value.lower() not in ("none", "uncompressed")
        findings.append(Finding(p.name, PASS if ok else FAIL, f"spark.sql.parquet.compression.codec={value}"
                                + ("" if ok else " (the guide: snappy)")))
    return findings

