"""The tuning guide's pre-production checklist, executable (docs/DESIGN.md §6).

Each of the guide's 21 checklist items (Spark 6, Kafka 5, storage 5, infrastructure 5) is a ``CheckItem``:
an id, its section, the guide's wording, and a function that inspects the *actual* configuration and returns
findings (one per subject: a Spark profile, a topic, a dataset, a manifest) with a status and a reason:

* ``pass``: the guide's setting is in place;
* ``fail``: it is not, and the reason says what was found, what the guide wants and where to change it;
* ``na``: the item does not apply (yet), and the reason says why (e.g. no Spark profile exists).

What is read: Spark profiles (``deploy/spark/**.yaml`` with a top-level ``conf:`` mapping of ``spark.*``
keys and an optional ``master:``; ``local[...]`` profiles are development profiles, cluster-only items are
not applicable to them), the topics' partitions, replication and configs from the broker, the real client settings
(``KafkaConnection.consumer_config()`` / ``producer_config()``), the catalog's partitioning and file-size
targets, the embedded engine's Parquet writer, and, when present, Kubernetes manifests (``deploy/k8s/``),
Grafana dashboards (``deploy/grafana/``) and Prometheus alert rules (``deploy/prometheus/``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ingest_platform.capacity import DEFAULT_SETTINGS, MB, PlannerSettings, plan_dataset
from ingest_platform.catalog import Dataset
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.kafka.topics import GUIDE_TOPIC_CONFIG, TopicAdminError, TopicProfile, TopicState

#: deploy/ in the source tree (the package is installed editable).
DEFAULT_DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"

PASS, FAIL, NA = "pass", "fail", "na"
SECTIONS = ("spark", "kafka", "storage", "infrastructure")

#: Where dashboards and alert rules may live under the deploy dir (the first existing ones are read).
DASHBOARD_DIRS = ("grafana", "dashboards", "monitoring")
ALERT_DIRS = ("prometheus", "alerts", "monitoring")
#: Metrics the guide's Grafana dashboard plots.
DASHBOARD_METRICS = ("ingestion_records_processed_total", "ingestion_processing_duration_seconds",
                     "kafka_consumer_lag_sum")


@dataclass(frozen=True)
class AlertRequirement:
    """One of the guide's alerting thresholds; ``values`` accepts fraction or percent spellings."""

    name: str
    pattern: str  # regex an alert's expr (or name) must match
    warning: tuple[float, ...]
    critical: tuple[float, ...]


ALERT_REQUIREMENTS = (
    AlertRequirement("consumer lag", r"lag", (100_000,), (1_000_000,)),
    AlertRequirement("processing time", r"processing_(duration|time)|duration_seconds", (120,), (300,)),
    AlertRequirement("error rate", r"error|fail", (0.01, 1), (0.05, 5)),
    AlertRequirement("memory usage", r"memory", (0.8, 80), (0.9, 90)),
)

#: Client settings the guide asks for: (key, comparison, value). Checked against the real client configs.
CONSUMER_REQUIREMENTS = (
    ("fetch.min.bytes", ">=", 1_048_576),
    ("fetch.wait.max.ms", "<=", 500),
    ("max.partition.fetch.bytes", ">=", 10_485_760),
    ("socket.receive.buffer.bytes", ">=", 1_048_576),
)
PRODUCER_REQUIREMENTS = (
    ("batch.size", ">=", 65_536),
    ("linger.ms", ">=", 10),
    ("queue.buffering.max.kbytes", ">=", 131_072),
    ("enable.idempotence", "==", True),
)
SPARK_AQE_KEYS = (
    "spark.sql.adaptive.enabled",
    "spark.sql.adaptive.coalescePartitions.enabled",
    "spark.sql.adaptive.skewJoin.enabled",
    "spark.sql.adaptive.localShuffleReader.enabled",
)
KRYO = "org.apache.spark.serializer.KryoSerializer"
GUIDE_FILE_MB = (128, 1024)
TIME_COLUMNS = ("year", "month", "day", "hour", "date")


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Finding:
    subject: str
    status: str
    reason: str


@dataclass(frozen=True)
class CheckItem:
    id: str
    section: str
    title: str
    check: Callable[[PreflightContext], list[Finding]]


@dataclass(frozen=True)
class ItemResult:
    id: str
    section: str
    title: str
    status: str
    reason: str
    findings: tuple[Finding, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "section": self.section, "title": self.title, "status": self.status,
                "reason": self.reason,
                "findings": [{"subject": f.subject, "status": f.status, "reason": f.reason} for f in self.findings]}


@dataclass(frozen=True)
class SparkProfile:
    name: str
    conf: Mapping[str, str]
    error: str | None = None

    @property
    def local(self) -> bool:
        return self.conf.get("spark.master", "").startswith("local")


@dataclass
class PreflightContext:
    """What the checks look at. ``check_broker=False`` makes the broker-backed items not-applicable."""

    datasets: tuple[Dataset, ...]
    profile: TopicProfile
    connection: KafkaConnection
    deploy_dir: Path = DEFAULT_DEPLOY_DIR
    lake_root: str = "lake"
    planner: PlannerSettings = DEFAULT_SETTINGS
    check_broker: bool = True
    consumer_config: Mapping[str, Any] | None = None
    producer_config: Mapping[str, Any] | None = None
    _topics: dict[str, TopicState | None] | TopicAdminError | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.consumer_config is None:
            self.consumer_config = self.connection.consumer_config("ingest-platform.preflight")
        if self.producer_config is None:
            self.producer_config = self.connection.producer_config()

    def topic_states(self) -> dict[str, TopicState | None]:
        """Read once from the broker; raises ``TopicAdminError`` (remembered) when it cannot be read."""
        from ingest_platform.kafka.topics import admin_client, describe_topics

        if self._topics is None:
            try:
                names = [d.topic for d in self.datasets]
                self._topics = describe_topics(admin_client(self.connection), names, self.connection.timeout_s)
            except TopicAdminError as error:
                self._topics = error
        if isinstance(self._topics, TopicAdminError):
            raise self._topics
        return self._topics

    def spark_profiles(self) -> list[SparkProfile]:
        return load_spark_profiles(self.deploy_dir / "spark")


def load_spark_profiles(folder: Path) -> list[SparkProfile]:
    """Every YAML file under ``folder`` with a top-level ``conf:`` mapping (values as Spark strings)."""
    profiles = []
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]) if folder.is_dir() else []:
        name = str(path.relative_to(folder.parent))
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            profiles.append(SparkProfile(name, {}, f"unreadable YAML: {error}"))
            continue
        if isinstance(document, Mapping) and isinstance(document.get("conf"), Mapping):
            conf = {str(k): _spark_value(v) for k, v in document["conf"].items()}
            if document.get("master") and "spark.master" not in conf:  # a top-level `master:` is spark.master
                conf["spark.master"] = _spark_value(document["master"])
            profiles.append(SparkProfile(name, conf))
    return profiles


# ---------------------------------------------------------------------------------------------------------
# Running


def run_preflight(ctx: PreflightContext, items: Iterable[CheckItem] | None = None) -> list[ItemResult]:
    results = []
    for item in items if items is not None else CHECKLIST:
        try:
            findings = item.check(ctx)
        except TopicAdminError as error:
            findings = [Finding("broker", FAIL, f"{error} (or pass --skip-broker to check the rest)")]
        results.append(_summarize(item, findings))
    return results


def _summarize(item: CheckItem, findings: list[Finding]) -> ItemResult:
    statuses = {f.status for f in findings}
    status = FAIL if FAIL in statuses else PASS if PASS in statuses else NA
    shown = [f for f in findings if f.status == status]
    reason = "; ".join(f"{f.subject}: {f.reason}" if f.subject else f.reason for f in shown)
    return ItemResult(item.id, item.section, item.title, status, reason, tuple(findings))


def results_json(results: list[ItemResult], profile: str) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NA)}
    return {"ok": counts[FAIL] == 0, "profile": profile, "summary": counts,
            "items": [r.as_dict() for r in results]}


def format_results(results: list[ItemResult]) -> str:
    marks = {PASS: "PASS", FAIL: "FAIL", NA: "N/A "}
    lines = []
    for section in SECTIONS:
        rows = [r for r in results if r.section == section]
        if not rows:
            continue
        lines.append(f"{section}:")
        for r in rows:
            lines.append(f"  [{marks[r.status]}] {r.title} ({r.id})")
            for f in r.findings:
                if r.status == NA or f.status != NA or len(r.findings) == 1:
                    subject = f"{f.subject}: " if f.subject else ""
                    lines.append(f"         {marks[f.status].strip().lower():<4} {subject}{f.reason}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NA)}
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[NA]} not applicable")
    return "\n".join(lines)


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


# ---------------------------------------------------------------------------------------------------------
# Kafka


def _broker_na() -> list[Finding]:
    return [Finding("broker", NA, "broker checks skipped (--skip-broker)")]


def check_partitions(ctx: PreflightContext) -> list[Finding]:
    if not ctx.check_broker:
        return _broker_na()
    states = ctx.topic_states()
    findings = []
    for dataset in ctx.datasets:
        plan = plan_dataset(dataset, ctx.planner)
        state = states.get(dataset.topic)
        subject = f"{dataset.name} ({dataset.topic})"
        source = "expected.peak_rps" if plan.basis == "expected" else "slo.throughput_rps"
        basis = (f"{plan.peak_rps:,.0f} records/s ({source}) "
                 f"/ {ctx.planner.partition_throughput_rps:,.0f} per partition")
        if state is None:
            findings.append(Finding(subject, FAIL, f"topic does not exist; the planner wants {plan.partitions} "
                                                   f"partitions ({basis}): run `ingest-platform topics apply`"))
        elif state.partitions < plan.partitions:
            findings.append(Finding(subject, FAIL, f"{state.partitions} partitions, the planner wants "
                                                   f"{plan.partitions} ({basis}): run `ingest-platform topics apply`"))
        else:
            findings.append(Finding(subject, PASS, f"{state.partitions} partitions >= {plan.partitions} ({basis})"))
    return findings


def _topics(ctx: PreflightContext) -> list[tuple[str, TopicState | None]]:
    states = ctx.topic_states()
    return [(name, states.get(name)) for name in dict.fromkeys(d.topic for d in ctx.datasets)]


def check_replication(ctx: PreflightContext) -> list[Finding]:
    if not ctx.check_broker:
        return _broker_na()
    rf, isr = ctx.profile.replication_factor, ctx.profile.min_insync_replicas
    findings = []
    for name, state in _topics(ctx):
        if state is None:
            findings.append(Finding(name, FAIL, "topic does not exist: run `ingest-platform topics apply`"))
            continue
        topic_isr = _int(state.config.get("min.insync.replicas"))
        problems = []
        if state.replication_factor < rf:
            problems.append(f"replication factor {state.replication_factor}, the {ctx.profile.name} profile wants "
                            f"{rf} (reassign partitions with kafka-reassign-partitions)")
        if topic_isr is None or topic_isr < isr:
            problems.append(f"min.insync.replicas {topic_isr}, the {ctx.profile.name} profile wants {isr} "
                            "(`ingest-platform topics apply`)")
        elif topic_isr > state.replication_factor:
            problems.append(f"min.insync.replicas {topic_isr} exceeds the {state.replication_factor} replicas: "
                            "acks=all produces fail")
        if state.config.get("unclean.leader.election.enable") == "true":
            problems.append("unclean.leader.election.enable is true (the guide: false; it can lose records)")
        if problems:
            findings.append(Finding(name, FAIL, "; ".join(problems)))
        else:
            local = " (local profile: single-node broker)" if ctx.profile.name == "local" else ""
            findings.append(Finding(name, PASS, f"replication factor {state.replication_factor}, "
                                                f"min.insync.replicas {topic_isr}{local}"))
    return findings


def check_compression(ctx: PreflightContext) -> list[Finding]:
    producer = str(ctx.producer_config.get("compression.type", "none"))
    findings = [Finding("producer", PASS if producer == "snappy" else FAIL,
                        f"compression.type={producer}" + ("" if producer == "snappy" else " (the guide: snappy)"))]
    if not ctx.check_broker:
        return [*findings, *_broker_na()]
    for name, state in _topics(ctx):
        if state is None:
            findings.append(Finding(name, FAIL, "topic does not exist: run `ingest-platform topics apply`"))
            continue
        value = state.config.get("compression.type")
        if value == GUIDE_TOPIC_CONFIG["compression.type"]:
            findings.append(Finding(name, PASS, "compression.type=snappy"))
        else:
            findings.append(Finding(name, FAIL, f"compression.type={value} (the guide: snappy; "
                                                "`ingest-platform topics apply` sets it)"))
    return findings


def _requirements(subject: str, config: Mapping[str, Any], requirements: Iterable[tuple[str, str, Any]],
                  origin: str) -> Finding:
    problems, shown = [], []
    for key, op, wanted in requirements:
        value = config.get(key)
        if value is None:
            problems.append(f"{key} not set (the guide: {op} {wanted})")
            continue
        ok = (_truthy(value) == wanted) if isinstance(wanted, bool) else _compare(float(value), op, wanted)
        (shown if ok else problems).append(f"{key}={value}" if ok else f"{key}={value} (the guide: {op} {wanted})")
    if problems:
        return Finding(subject, FAIL, "; ".join(problems) + f" [{origin}]")
    return Finding(subject, PASS, ", ".join(shown))


def check_producer_batching(ctx: PreflightContext) -> list[Finding]:
    return [_requirements("producer", ctx.producer_config, PRODUCER_REQUIREMENTS,
                          "ingest_platform.kafka.client.PRODUCER_TUNING")]


def check_consumer_fetch(ctx: PreflightContext) -> list[Finding]:
    return [_requirements("consumer", ctx.consumer_config, CONSUMER_REQUIREMENTS,
                          "ingest_platform.kafka.client.CONSUMER_TUNING")]


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


# ---------------------------------------------------------------------------------------------------------
# Infrastructure


def _manifests(ctx: PreflightContext) -> list[tuple[str, Mapping[str, Any]]]:
    folder = ctx.deploy_dir / "k8s"
    docs: list[tuple[str, Mapping[str, Any]]] = []
    if not folder.is_dir():
        return docs
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        name = str(path.relative_to(ctx.deploy_dir))
        try:
            loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as error:
            docs.append((name, {"kind": "_Unreadable", "error": str(error)}))
            continue
        for doc in loaded:
            if isinstance(doc, Mapping) and doc.get("kind") == "List":
                docs.extend((name, item) for item in doc.get("items") or [] if isinstance(item, Mapping))
            elif isinstance(doc, Mapping):
                docs.append((name, doc))
    return docs


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")


def _containers(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec: Any = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    if doc.get("kind") != "Pod":
        spec = ((spec.get("template") or {}).get("spec") or {})
    return [c for c in spec.get("containers") or [] if isinstance(c, Mapping)]


def _k8s_na() -> list[Finding]:
    return [Finding("deploy/k8s", NA, "no Kubernetes manifests under deploy/k8s/")]


def check_autoscaling(ctx: PreflightContext) -> list[Finding]:
    docs = _manifests(ctx)
    findings = []
    for name, doc in docs:
        if doc.get("kind") == "HorizontalPodAutoscaler":
            spec = doc.get("spec") or {}
            title = f"{name}: {(doc.get('metadata') or {}).get('name', '?')}"
            if spec.get("maxReplicas") and spec.get("metrics"):
                findings.append(Finding(title, PASS, f"HPA {spec.get('minReplicas', 1)}-{spec['maxReplicas']} "
                                                     f"replicas on {len(spec['metrics'])} metric(s)"))
            else:
                findings.append(Finding(title, FAIL, "HPA without maxReplicas or metrics"))
    for p in ctx.spark_profiles():
        if not p.error and not p.local and p.conf.get("spark.dynamicAllocation.enabled") == "true":
            findings.append(Finding(p.name, PASS, "Spark dynamic allocation scales executors"))
    if findings:
        return findings
    if not docs and not [p for p in ctx.spark_profiles() if not p.local]:
        return [Finding("deploy", NA, "no Kubernetes manifests under deploy/k8s/ and no cluster Spark profile")]
    return [Finding("deploy", FAIL, "no HorizontalPodAutoscaler in deploy/k8s/ and no cluster Spark profile with "
                                    "spark.dynamicAllocation.enabled=true (the guide: HPA 10-200 replicas on "
                                    "CPU 70 %/memory 80 %)")]


def check_resource_limits(ctx: PreflightContext) -> list[Finding]:
    findings = []
    for name, doc in _manifests(ctx):
        if doc.get("kind") == "_Unreadable":
            findings.append(Finding(name, FAIL, f"unreadable YAML: {doc['error']}"))
        if doc.get("kind") not in WORKLOADS:
            continue
        for container in _containers(doc):
            subject = f"{name}: {doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}/{container.get('name')}"
            resources = container.get("resources") or {}
            missing = [f"{part}.{res}" for part in ("requests", "limits") for res in ("cpu", "memory")
                       if res not in (resources.get(part) or {})]
            if missing:
                findings.append(Finding(subject, FAIL, f"resources without {', '.join(missing)}"))
            else:
                findings.append(Finding(subject, PASS, "cpu and memory requests and limits set"))
    return findings or _k8s_na()


def check_health_checks(ctx: PreflightContext) -> list[Finding]:
    findings = []
    for name, doc in _manifests(ctx):
        if doc.get("kind") not in LONG_RUNNING:
            continue
        for container in _containers(doc):
            subject = f"{name}: {doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}/{container.get('name')}"
            probes = [p for p in ("livenessProbe", "readinessProbe", "startupProbe") if container.get(p)]
            findings.append(Finding(subject, PASS if probes else FAIL,
                                    ", ".join(probes) if probes else "no liveness or readiness probe"))
    return findings or [Finding("deploy/k8s", NA, "no long-running workloads (Deployment, StatefulSet, DaemonSet) "
                                                  "under deploy/k8s/")]


def _first_dir(ctx: PreflightContext, names: Iterable[str]) -> list[Path]:
    return [ctx.deploy_dir / n for n in names if (ctx.deploy_dir / n).is_dir()]


def _strings(node: Any, key: str) -> Iterable[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _strings(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, key)


def check_dashboards(ctx: PreflightContext) -> list[Finding]:
    files = [f for d in _first_dir(ctx, DASHBOARD_DIRS) for f in sorted(d.rglob("*.json"))]
    if not files:
        return [Finding("deploy", NA, f"no dashboard JSON under deploy/{{{','.join(DASHBOARD_DIRS)}}}/")]
    exprs: list[str] = []
    problems = []
    for path in files:
        try:
            exprs.extend(_strings(json.loads(path.read_text(encoding="utf-8")), "expr"))
        except (OSError, json.JSONDecodeError) as error:
            problems.append(Finding(str(path.relative_to(ctx.deploy_dir)), FAIL, f"unreadable JSON: {error}"))
    missing = [m for m in DASHBOARD_METRICS if not any(m in e for e in exprs)]
    subject = ", ".join(str(f.relative_to(ctx.deploy_dir)) for f in files)
    if missing:
        return [*problems, Finding(subject, FAIL, f"no panel plots {', '.join(missing)} (the guide's throughput, "
                                                  "latency and consumer-lag panels)")]
    return [*problems, Finding(subject, PASS, f"panels for {', '.join(DASHBOARD_METRICS)}")]


def _alert_rules(ctx: PreflightContext) -> tuple[list[Mapping[str, Any]], list[Finding], list[str]]:
    rules: list[Mapping[str, Any]] = []
    problems: list[Finding] = []
    files = []
    paths = [f for d in _first_dir(ctx, ALERT_DIRS) for f in sorted([*d.rglob("*.yaml"), *d.rglob("*.yml")])]
    paths += [ctx.deploy_dir / n for n, doc in _manifests(ctx) if doc.get("kind") == "PrometheusRule"]
    for path in dict.fromkeys(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as error:
            problems.append(Finding(str(path.relative_to(ctx.deploy_dir)), FAIL, f"unreadable YAML: {error}"))
            continue
        found = False
        for doc in docs:
            if not isinstance(doc, Mapping):
                continue
            groups = doc.get("groups") or (doc.get("spec") or {}).get("groups") or []
            for group in groups if isinstance(groups, list) else []:
                for rule in (group or {}).get("rules") or []:
                    if isinstance(rule, Mapping) and rule.get("alert") and rule.get("expr"):
                        rules.append(rule)
                        found = True
        if found:
            files.append(str(path.relative_to(ctx.deploy_dir)))
    return rules, problems, files


def _thresholds(expr: str) -> list[float]:
    return [float(v.replace("_", "")) for v in re.findall(r">=?\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)",
                                                           expr)]


def check_alerts(ctx: PreflightContext) -> list[Finding]:
    rules, problems, files = _alert_rules(ctx)
    if not rules and not problems:
        return [Finding("deploy", NA, f"no Prometheus alert rules under deploy/{{{','.join(ALERT_DIRS)}}}/ "
                                      "or PrometheusRule manifests")]
    findings = list(problems)
    for req in ALERT_REQUIREMENTS:
        missing = []
        for severity, values in (("warning", req.warning), ("critical", req.critical)):
            hit = any(
                re.search(req.pattern, f"{rule['alert']} {rule['expr']}", re.IGNORECASE)
                and str((rule.get("labels") or {}).get("severity", "")).lower() == severity
                and any(abs(t - v) < 1e-9 for t in _thresholds(str(rule["expr"])) for v in values)
                for rule in rules
            )
            if not hit:
                missing.append(f"{severity} > {_fmt(values[-1])}")
        if missing:
            findings.append(Finding(req.name, FAIL, f"no rule for {', '.join(missing)} in {', '.join(files) or '-'}"))
        else:
            findings.append(Finding(req.name, PASS, f"warning > {_fmt(req.warning[-1])}, critical > "
                                                    f"{_fmt(req.critical[-1])}"))
    return findings


# ---------------------------------------------------------------------------------------------------------
# The checklist, in the guide's order and wording


CHECKLIST: tuple[CheckItem, ...] = (
    CheckItem("spark.dynamic_allocation", "spark", "Dynamic allocation enabled", check_dynamic_allocation),
    CheckItem("spark.adaptive_execution", "spark", "Adaptive query execution enabled", check_adaptive),
    CheckItem("spark.kryo", "spark", "Kryo serialization configured", check_kryo),
    CheckItem("spark.shuffle_partitions", "spark", "Optimal partition count set", check_shuffle_partitions),
    CheckItem("spark.memory_fractions", "spark", "Memory fractions tuned", check_memory),
    CheckItem("spark.shuffle", "spark", "Shuffle optimization enabled", check_shuffle),
    CheckItem("kafka.partitions", "kafka", "Partition count calculated based on throughput", check_partitions),
    CheckItem("kafka.replication", "kafka", "Replication factor set to 3", check_replication),
    CheckItem("kafka.compression", "kafka", "Compression enabled (snappy)", check_compression),
    CheckItem("kafka.producer_batching", "kafka", "Producer batching configured", check_producer_batching),
    CheckItem("kafka.consumer_fetch", "kafka", "Consumer fetch sizes optimized", check_consumer_fetch),
    CheckItem("storage.file_sizes", "storage", "File sizes between 128MB-1GB", check_file_sizes),
    CheckItem("storage.partitioning", "storage", "Appropriate partitioning strategy", check_partitioning),
    CheckItem("storage.s3a_multipart", "storage", "S3A multipart upload configured", check_s3a_multipart),
    CheckItem("storage.connection_pooling", "storage", "Connection pooling enabled", check_s3a_pool),
    CheckItem("storage.compression", "storage", "Compression enabled", check_storage_compression),
    CheckItem("infrastructure.autoscaling", "infrastructure", "Auto-scaling configured", check_autoscaling),
    CheckItem("infrastructure.resource_limits", "infrastructure", "Resource limits set", check_resource_limits),
    CheckItem("infrastructure.health_checks", "infrastructure", "Health checks implemented", check_health_checks),
    CheckItem("infrastructure.dashboards", "infrastructure", "Monitoring dashboards created", check_dashboards),
    CheckItem("infrastructure.alerts", "infrastructure", "Alerting rules configured", check_alerts),
)


# ---------------------------------------------------------------------------------------------------------
# Value helpers


def _spark_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(value: str) -> str:
    """Hadoop sizes (``128M``, ``64m``, ``134217728``) as bytes; other values unchanged."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*", str(value))
    return str(int(match.group(1)) * _UNITS[match.group(2).lower()]) if match else value


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _compare(value: float, op: str, wanted: float) -> bool:
    return {">=": value >= wanted, "<=": value <= wanted, "==": value == wanted}[op]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"
