"""Sensors that run the platform: consumer lag and topic partitions drive runs, one run per dataset at a time.

Thin wiring over ``ingest_platform/monitoring`` (docs/DESIGN.md §7): the sensors read offsets only (Kafka's
AdminClient, short timeouts) and the tables' ledgers (cached by table version), keep a small JSON cursor,
emit one ``AssetObservation`` per dataset per tick, and request runs with ``run_key``s. They never request a
run for a dataset that has one queued or in progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import dagster as dg

from ingest_platform.capacity import DEFAULT_SETTINGS
from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.k8s import k8s_run_tags
from ingest_platform.defs.resources import KafkaResource, LakeResource
from ingest_platform.monitoring.lag import STATUS_CODES, Evaluation, Window, dataset_lag, evaluate
from ingest_platform.monitoring.offsets import DEFAULT_TIMEOUT_S, TopicOffsets, read_topic_offsets
from ingest_platform.monitoring.partitions import partition_findings
from ingest_platform.monitoring.positions import PositionRequest, TablePosition, position_cache

LAG_SENSOR = "ingest_lag_sensor"
PARTITION_SENSOR = "ingest_partition_sensor"
LAG_INTERVAL_S = 30
PARTITION_INTERVAL_S = 120
#: Tag on every run a sensor requests; the in-progress check also reads the runs' asset selections.
DATASET_TAG = "ingest/dataset"
#: Maintenance runs' tag (the dataset's name): not ``ingest/dataset``, so no compaction holds back ingestion.
MAINTAINS_TAG = "ingest/maintains"
TRIGGER_TAG = "ingest/trigger"
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
#: Runs that are executing (not waiting in the queue).
EXECUTING = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
CURSOR_VERSION = 1
#: What the sensors may run: the catalog's tables (asset keys ``lake/<source>/<name>``). A prefix rather than
#: every key (the selection is part of the code location's snapshot), and ``asset_selection`` rather than
#: ``target``: runs go to the base asset job instead of an extra job per sensor (benchmarks/definitions_bench.py).
LAKE_TABLES = dg.AssetSelection.key_prefixes(["lake"])


def _now() -> float:
    """The tick's clock (a function, so tests can move it)."""
    return time.time()


def running_datasets(
    instance: dg.DagsterInstance,
    catalog: Catalog,
    exclude_run_id: str | None = None,
    statuses: list[dg.DagsterRunStatus] = IN_PROGRESS,
) -> set[str]:
    """Datasets with an ingest run in one of ``statuses`` (default: queued or in progress): one query for all,
    by tag or by the run's asset selection. ``exclude_run_id``: the asking run itself. Maintenance runs carry
    another tag (``ingest/maintains``) and select no asset: a compaction never holds back ingestion (§8
    "Concurrency"), and stream runs (no asset selected) are not ingest runs here either."""
    by_key = {dg.AssetKey(d.asset_path): d.name for d in catalog.datasets}
    names: set[str] = set()
    for record in instance.get_run_records(dg.RunsFilter(statuses=statuses)):
        run = record.dagster_run
        if run.run_id == exclude_run_id:
            continue
        if DATASET_TAG in run.tags:
            names.add(run.tags[DATASET_TAG])
        for key in run.asset_selection or ():
            if key in by_key:
                names.add(by_key[key])
    return names


def _read(
    catalog: Catalog, kafka: KafkaResource, lake: LakeResource, timeout_s: float
) -> tuple[dict[str, TopicOffsets], dict[str, TablePosition]]:
    offsets = read_topic_offsets(kafka.connection(), {d.topic for d in catalog.datasets}, timeout_s)
    requests = [
        PositionRequest(d.name, d.table_path, frozenset(offsets[d.topic].marks))
        for d in catalog.datasets
        if offsets[d.topic].error is None
    ]
    return offsets, position_cache(lake.location()).positions(requests)


def _load_cursor(raw: str | None) -> dict:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) and data.get("v") == CURSOR_VERSION else {}


def _run_request(dataset: Dataset, run_key: str, trigger: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        asset_selection=[dg.AssetKey(dataset.asset_path)],
        tags={DATASET_TAG: dataset.name, TRIGGER_TAG: trigger, **k8s_run_tags(dataset)},
    )


def lag_observation(
    dataset: Dataset, result: Evaluation, blocked: str | None, now: float, interval_s: int = LAG_INTERVAL_S
) -> dg.AssetObservation:
    """The figures of one tick. ``observed_at``/``observed_by`` say how old they are: the asset page shows the
    latest observation, so a stopped sensor shows as an old ``observed_at``."""
    lag = result.lag
    metadata: dict[str, object] = {
        "observed_at": dg.MetadataValue.timestamp(now),
        "observed_by": dg.MetadataValue.text(f"{LAG_SENSOR} tick (every {interval_s} s)"),
        "lag": dg.MetadataValue.int(lag.total),
        "lag_status": dg.MetadataValue.text(result.status),
        "lag_status_code": dg.MetadataValue.int(STATUS_CODES[result.status]),
        "lag_status_reason": dg.MetadataValue.text(result.reason),
        "partitions": dg.MetadataValue.int(len(lag.partitions)),
        "log_end_offsets": dg.MetadataValue.int(lag.end_total),
        "lag_by_partition": dg.MetadataValue.json({str(p): n for p, n in lag.by_partition.items()}),
        "run_due": dg.MetadataValue.text("; ".join(result.due) or "no"),
    }
    if result.age_s is not None:
        metadata["oldest_unconsumed_age_s"] = dg.MetadataValue.float(round(result.age_s, 1))
    if lag.gaps:
        metadata["data_loss"] = dg.MetadataValue.json({str(p): list(r) for p, r in lag.gaps.items()})
    if blocked:
        metadata["blocked"] = dg.MetadataValue.text(blocked)
    return dg.AssetObservation(asset_key=dataset.asset_path, metadata=metadata)


def build_lag_sensor(
    catalog: Catalog,
    interval_s: int = LAG_INTERVAL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=LAG_SENSOR,
        minimum_interval_seconds=interval_s,
        asset_selection=LAKE_TABLES,
        default_status=default_status,
        description="Consumer lag of every dataset by its table's ledger; runs a dataset when its lag reaches "
        "lag_threshold or its oldest unconsumed record would break the latency SLO (docs/DESIGN.md §7).",
    )
    def ingest_lag_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, lake: LakeResource):
        now = _now()
        cursor = _load_cursor(context.cursor)
        windows = cursor.get("d", {})
        saved_at = float(cursor.get("t", now))
        offsets, positions = _read(catalog, kafka, lake, timeout_s)
        running = running_datasets(context.instance, catalog)
        requests, events, kept = [], [], {}
        skipped = SkipReasons()
        for dataset in catalog.datasets:
            topic = offsets[dataset.topic]
            previous = windows.get(dataset.name)
            if topic.error is not None:
                skipped.add("unreadable", dataset.name, str(topic.error))
                context.log.warning(f"{dataset.name}: {topic.error}")
                if previous is not None:  # re-based on this tick's time, unchanged otherwise
                    kept[dataset.name] = Window.from_json(previous, saved_at).to_json(now)
                continue
            position = positions[dataset.name]
            lag = dataset_lag(position.ledger, topic.marks)
            result = evaluate(
                lag, position.ledger, Window.from_json(previous, saved_at) if previous else None, now,
                lag_threshold=dataset.lag_threshold, latency_s=dataset.slo.latency_s, interval_s=interval_s,
                last_commit_s=position.last_commit_ms / 1000 if position.last_commit_ms else None,
                topic_id=topic.topic_id,
            )  # fmt: skip
            kept[dataset.name] = result.window.to_json(now)
            blocked = None
            if result.window.recreated:
                blocked = (
                    f"topic '{dataset.topic}' was deleted and recreated (id {result.window.recreated} -> "
                    f"{topic.topic_id}) while the table holds its offsets; no run until an operator resolves it"
                )
                context.log.error(f"{dataset.name}: {blocked}")
            events.append(lag_observation(dataset, result, blocked, now, interval_s))
            if lag.total == 0:
                skipped.add("caught up", dataset.name)
            elif blocked:
                skipped.add("blocked", dataset.name, "topic recreated")
            elif dataset.continuous:  # its stream commits (§10): observed, never run in batch
                skipped.add("streamed", dataset.name)
            elif not result.due:
                skipped.add("not due", dataset.name, not_due_detail(dataset, result, interval_s))
            elif dataset.name in running:
                skipped.add("running", dataset.name, f"lag {lag.total}")
            else:
                run_key = f"lag:{dataset.name}:{sum(position.ledger.values())}:{lag.end_total}"
                requests.append(_run_request(dataset, run_key, "lag"))
                context.log.info(f"{dataset.name}: run requested: {'; '.join(result.due)}")
        new_cursor = json.dumps({"v": CURSOR_VERSION, "t": round(now, 3), "d": kept}, separators=(",", ":"))
        skip = None
        if not requests:
            skip = "no dataset needs a run: " + skipped.summary()
            context.log.info(skip)  # the tick's logs say it too, beside the tick's skip reason
        elif skipped:
            context.log.info(f"{len(requests)} run(s) requested; the others: {skipped.summary()}")
        return dg.SensorResult(run_requests=requests, asset_events=events, cursor=new_cursor, skip_reason=skip)

    return ingest_lag_sensor


class SkipReasons:
    """Why the lag sensor started no run for each dataset, grouped and compact: ``caught up (2): orders,
    clicks; not due (1): payments (lag 5 of threshold 100, oldest ~14 s, due at 30 s)``; at most
    ``shown`` names per group, then how many more."""

    ORDER = ("caught up", "streamed", "not due", "running", "blocked", "unreadable")

    def __init__(self, shown: int = 5):
        self.shown = shown
        self.groups: dict[str, list[str]] = {}

    def add(self, group: str, dataset: str, detail: str | None = None) -> None:
        self.groups.setdefault(group, []).append(f"{dataset} ({detail})" if detail else dataset)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def summary(self) -> str:
        parts = []
        for group in self.ORDER:
            names = self.groups.get(group, [])
            if names:
                more = f", +{len(names) - self.shown} more" if len(names) > self.shown else ""
                parts.append(f"{group} ({len(names)}): {', '.join(names[: self.shown])}{more}")
        return "; ".join(parts)


def not_due_detail(dataset: Dataset, result: Evaluation, interval_s: int) -> str:
    """Why a dataset with lag is not due yet: its lag against the threshold, the age against the SLO."""
    threshold = f" of threshold {dataset.lag_threshold}" if dataset.lag_threshold else ", no lag_threshold"
    due_at = max(0.0, dataset.slo.latency_s - interval_s)
    age = "age unknown until the next tick" if result.age_s is None else f"oldest ~{result.age_s:.0f} s"
    return f"lag {result.lag.total}{threshold}, {age}, due at {due_at:.0f} s"


def build_partition_sensor(
    catalog: Catalog,
    interval_s: int = PARTITION_INTERVAL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=PARTITION_SENSOR,
        minimum_interval_seconds=interval_s,
        asset_selection=LAKE_TABLES,
        default_status=default_status,
        description="Topic partitions of every dataset: new partitions are ingested from offset 0, recreated "
        "topics and retention gaps are reported, partition counts recommended (docs/DESIGN.md §7).",
    )
    def ingest_partition_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, lake: LakeResource):
        now = _now()
        cursor = _load_cursor(context.cursor)
        states = cursor.get("d", {})
        offsets, positions = _read(catalog, kafka, lake, timeout_s)
        running = running_datasets(context.instance, catalog)
        last_rates = _last_run_rates(context.instance, catalog.datasets)
        requests, events, kept, problems = [], [], {}, []
        for dataset in catalog.datasets:
            topic = offsets[dataset.topic]
            if topic.error is not None:
                problems.append(f"{dataset.name}: {topic.error}")
                if dataset.name in states:
                    kept[dataset.name] = states[dataset.name]
                continue
            ledger = positions[dataset.name].ledger
            findings, state = partition_findings(dataset, topic, ledger, states.get(dataset.name), now)
            kept[dataset.name] = state
            metadata: dict[str, object] = {
                "partitions": dg.MetadataValue.int(findings.partitions),
                "target_records_per_s": dg.MetadataValue.float(round(float(findings.target_rps), 1)),
            }
            if findings.recommended_partitions > findings.partitions:  # only growth is advice (fewer: harmless)
                metadata["recommended_partitions"] = dg.MetadataValue.int(findings.recommended_partitions)
                metadata["partition_advice"] = dg.MetadataValue.text(
                    f"add partitions: {findings.target_rps:,.0f} records/s (the largest of slo.throughput_rps, "
                    f"expected.peak_rps and the produce rate) needs {findings.recommended_partitions} at the "
                    f"guide's {DEFAULT_SETTINGS.partition_throughput_rps:,.0f} records/s per partition"
                )
            if findings.produce_rps is not None:
                metadata["produce_records_per_s"] = dg.MetadataValue.float(round(float(findings.produce_rps), 1))
            if dataset.name in last_rates:
                metadata["last_run_records_per_s"] = dg.MetadataValue.float(last_rates[dataset.name])
            if findings.new_partitions:
                metadata["new_partitions"] = dg.MetadataValue.json(list(findings.new_partitions))
            if findings.recreated:
                metadata["topic_recreated"] = dg.MetadataValue.text(findings.recreated)
                problems.append(f"{dataset.name}: topic '{dataset.topic}' deleted and recreated: {findings.recreated}")
                context.log.error(problems[-1])
            if findings.gaps:
                metadata["data_loss"] = dg.MetadataValue.json({str(p): list(r) for p, r in findings.gaps.items()})
                what = (
                    "skipped and recorded in the next commit"
                    if dataset.on_data_loss == "skip"
                    else ("runs fail until the loss is accepted (on_data_loss: skip) or the data re-produced")
                )
                problems.append(
                    f"{dataset.name}: records deleted by retention before ingestion: "
                    f"{findings.describe_gaps(dataset.topic)}; {what}"
                )
                context.log.error(problems[-1])
            events.append(dg.AssetObservation(asset_key=dataset.asset_path, metadata=metadata))
            if findings.new_partitions and dataset.name not in running and not dataset.continuous:
                run_key = f"partitions:{dataset.name}:{topic.topic_id}:{findings.partitions}"
                requests.append(_run_request(dataset, run_key, "partitions"))
                context.log.info(
                    f"{dataset.name}: {dataset.topic} grew from {findings.previous_partitions} to "
                    f"{findings.partitions} partitions; new partitions {list(findings.new_partitions)} are read "
                    "from their earliest offset"
                )
        new_cursor = json.dumps({"v": CURSOR_VERSION, "d": kept}, separators=(",", ":"))
        skip = None
        if not requests:
            skip = "no partition changes" + (": " + " | ".join(problems) if problems else "")
        return dg.SensorResult(run_requests=requests, asset_events=events, cursor=new_cursor, skip_reason=skip)

    return ingest_partition_sensor


def _last_run_rates(instance: dg.DagsterInstance, datasets: Iterable[Dataset]) -> dict[str, float]:
    """records/s of each dataset's latest materialization (the asset's own metadata), in one query."""
    by_key = {dg.AssetKey(d.asset_path): d.name for d in datasets}
    rates = {}
    for key, event in instance.get_latest_materialization_events(list(by_key)).items():
        materialization = event.asset_materialization if event is not None else None
        value = materialization.metadata.get("records_per_s") if materialization is not None else None
        if value is not None and isinstance(value.value, int | float):
            rates[by_key[key]] = float(value.value)
    return rates


def sensor_definitions(catalog: Catalog) -> dg.Definitions:
    """The lag and partition sensors over every dataset of ``catalog`` (merge into the code location)."""
    return dg.Definitions(sensors=[build_lag_sensor(catalog), build_partition_sensor(catalog)])
