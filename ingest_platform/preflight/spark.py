"""The guide's checklist, Spark section: dynamic allocation, AQE, Kryo, shuffle partitions, memory fractions, shuffle.

docs/DESIGN.md §6 states the rules; ``ingest_platform.preflight.CHECKLIST`` lists the items in the guide's order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from ingest_platform.preflight.checklist import FAIL, NA, PASS, Finding, PreflightContext, SparkProfile, _float, _int

SPARK_AQE_KEYS = (
    "spark.sql.adaptive.enabled",
    "spark.sql.adaptive.coalescePartitions.enabled",
    "spark.sql.adaptive.skewJoin.enabled",
    "spark.sql.adaptive.localShuffleReader.enabled",
)
KRYO = "org.apache.spark.serializer.KryoSerializer"

# ---------------------------------------------------------------------------------------------------------
# Spark


def _per_spark_profile(ctx: PreflightContext, check: Callable[[SparkProfile], Finding | None]) -> list[Finding]:
    profiles = ctx.spark_profiles()
    if not profiles:
        return [Finding("deploy/spark", NA, "no Spark profile (a YAML file with a top-level 'conf:' mapping of "
                                            "spark.* settings under deploy/spark/): nothing runs on Spark yet")]
    findings = []
    for profile in profiles:
        if profile.error:
            findings.append(Finding(profile.name, FAIL, profile.error))
            continue
        finding = check(profile)
        if finding is not None:
            findings.append(finding)
    return findings


def _local_na(profile: SparkProfile, what: str) -> Finding:
    return Finding(profile.name, NA, f"local mode (spark.master={profile.conf['spark.master']}): {what}")


def check_dynamic_allocation(ctx: PreflightContext) -> list[Finding]:
    def check(p: SparkProfile) -> Finding:
        if p.local:
            return _local_na(p, "one JVM, no executors to scale")
        value = p.conf.get("spark.dynamicAllocation.enabled", "false")
        if value != "true":
            return Finding(p.name, FAIL, f"spark.dynamicAllocation.enabled is {value} (the guide: true, "
                                         "minExecutors 10, initialExecutors 20, maxExecutors 500)")
        bounds = ", ".join(f"{k}={p.conf[f'spark.dynamicAllocation.{k}']}"
                           for k in ("minExecutors", "initialExecutors", "maxExecutors")
                           if f"spark.dynamicAllocation.{k}" in p.conf)
        return Finding(p.name, PASS, f"enabled ({bounds or 'Spark default bounds'})")

    return _per_spark_profile(ctx, check)


def check_adaptive(ctx: PreflightContext) -> list[Finding]:
    def check(p: SparkProfile) -> Finding:
        off = [k for k in SPARK_AQE_KEYS if p.conf.get(k, "true") != "true"]
        if off:
            return Finding(p.name, FAIL, f"{', '.join(off)} set to false (the guide enables all of "
                                         f"{', '.join(SPARK_AQE_KEYS)})")
        unset = [k for k in SPARK_AQE_KEYS if k not in p.conf]
        note = f" ({len(unset)} by Spark's default true)" if unset else ""
        return Finding(p.name, PASS, f"adaptive execution, partition coalescing, skew join and local shuffle "
                                     f"reader on{note}")

    return _per_spark_profile(ctx, check)


def check_kryo(ctx: PreflightContext) -> list[Finding]:
    def check(p: SparkProfile) -> Finding:
        value = p.conf.get("spark.serializer")
        if value != KRYO:
            shown = value or "not set (JavaSerializer)"
            return Finding(p.name, FAIL, f"spark.serializer is {shown}; the guide: {KRYO}")
        return Finding(p.name, PASS, "spark.serializer is Kryo")

    return _per_spark_profile(ctx, check)


def spark_cores(conf: Mapping[str, str]) -> int | None:
    """Cores a batch starts with: local[N]; else executors (instances, or dynamic allocation's initial/min
    count) × spark.executor.cores. None when the profile does not say (local[*], missing keys)."""
    master = conf.get("spark.master", "")
    match = re.fullmatch(r"local\[(\d+)(,\d+)?\]", master)
    if match:
        return int(match.group(1))
    if master.startswith("local"):
        return None
    cores = _int(conf.get("spark.executor.cores"))
    count = None
    for key in ("spark.executor.instances", "spark.dynamicAllocation.initialExecutors",
                "spark.dynamicAllocation.minExecutors"):
        count = _int(conf.get(key))
        if count:
            break
    return cores * count if cores and count else None


def check_shuffle_partitions(ctx: PreflightContext) -> list[Finding]:
    def check(p: SparkProfile) -> Finding:
        value = _int(p.conf.get("spark.sql.shuffle.partitions"))
        if value is None:
            return Finding(p.name, FAIL, "spark.sql.shuffle.partitions not set: Spark's fixed 200 whatever the "
                                         "cluster (the guide: 2-3x the cores, e.g. 400)")
        cores = spark_cores(p.conf)
        if cores is None:
            return Finding(p.name, PASS, f"spark.sql.shuffle.partitions={value} (the profile does not state its "
                                         "cores, so the 2-3x ratio cannot be checked)")
        ratio = value / cores
        coalesce = p.conf.get("spark.sql.adaptive.enabled", "true") == "true" and p.conf.get(
            "spark.sql.adaptive.coalescePartitions.enabled", "true") == "true"
        if ratio < 2 or (ratio > 3 and not coalesce):
            return Finding(p.name, FAIL, f"spark.sql.shuffle.partitions={value} is {ratio:.1f}x {cores} cores; "
                                         f"the guide: 2-3x ({2 * cores}-{3 * cores})")
        extra = " (above 3x: adaptive execution coalesces the surplus)" if ratio > 3 else ""
        return Finding(p.name, PASS, f"spark.sql.shuffle.partitions={value} is {ratio:.1f}x {cores} cores{extra}")

    return _per_spark_profile(ctx, check)


def check_memory(ctx: PreflightContext) -> list[Finding]:
    def check(p: SparkProfile) -> Finding:
        if p.local:
            return _local_na(p, "a development profile; memory fractions are tuned for cluster executors")
        fraction = _float(p.conf.get("spark.memory.fraction"))
        memory_key = "spark.executor.memory"
        problems = []
        if fraction is None:
            problems.append("spark.memory.fraction not set (Spark's default 0.6; the guide tunes it to 0.8)")
        elif not 0 < fraction < 1:
            problems.append(f"spark.memory.fraction={fraction} is outside (0, 1)")
        if memory_key not in p.conf:
            problems.append(f"{memory_key} not set (the guide: executors 16g, driver 8g)")
        if problems:
            return Finding(p.name, FAIL, "; ".join(problems))
        return Finding(p.name, PASS, f"spark.memory.fraction={fraction}, {memory_key}={p.conf[memory_key]}")

    return _per_spark_profile(ctx, check)


def check_shuffle(ctx: PreflightContext) -> list[Finding]:
    def check(p: SparkProfile) -> Finding:
        problems = [f"{k} is false" for k in ("spark.shuffle.compress", "spark.shuffle.spill.compress")
                    if p.conf.get(k, "true") != "true"]
        if not p.local and p.conf.get("spark.dynamicAllocation.enabled") == "true" and not (
            p.conf.get("spark.shuffle.service.enabled") == "true"
            or p.conf.get("spark.dynamicAllocation.shuffleTracking.enabled") == "true"
        ):
            problems.append("dynamic allocation without spark.shuffle.service.enabled=true (or, on Kubernetes, "
                            "spark.dynamicAllocation.shuffleTracking.enabled=true) loses shuffle files")
        if problems:
            return Finding(p.name, FAIL, "; ".join(problems))
        return Finding(p.name, PASS, "shuffle and spill compression on"
                       + ("" if p.local else ", shuffle files survive executor removal"))

    return _per_spark_profile(ctx, check)

