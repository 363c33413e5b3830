"""Stream groups in Dagster (docs/DESIGN.md §10.8–10.9): per group a job whose one op runs the stream process
for the group's continuous datasets inside one long-lived run; the supervisor sensor that keeps one such run
alive per group; the ``stream`` asset check of every continuous dataset.

The op only wires: ``StreamProcess`` (the core) runs on a thread; the op's thread yields the Dagster events
that ``StreamEvents`` has due (summarised materializations, ``stream`` check evaluations) and forwards the
stream's warnings to the run's log. Run termination (UI "Terminate", or SIGTERM to the run process: Dagster
raises an interrupt in the op) stops the stream gracefully — in-flight commits finish — and the run ends
CANCELED (terminated from Dagster) or SUCCESS (a bare SIGTERM, e.g. a pod evicted), not as a crash. A dataset
that stops on an error fails its ``stream`` check while the group streams on; the run fails only when no
dataset is left streaming. The op takes no pool: maintenance of a table never waits for, nor holds back, its
stream (§8 "Concurrency", §10.5).
"""

import logging
import queue
import threading
import time
from collections.abc import Iterator

import dagster as dg

from ingest_platform.catalog import Catalog, Dataset
from ingest_platform.defs.resources import KafkaResource, LakeResource
from ingest_platform.defs.stream_events import STREAM_CHECK, StreamEvent, StreamEvents
from ingest_platform.kafka.client import KafkaConnection
from ingest_platform.lake.tables import LakeLocation
from ingest_platform.streaming.process import StreamProcess, StreamSettings
from ingest_platform.streaming.supervision import (
    ACTIVE,
    ENDED,
    FAILED,
    GAVE_UP,
    RUNNING,
    START,
    RunFact,
    SupervisionPolicy,
    decide,
)

#: Tags of every stream run: one run per group (dagster.yaml / Helm: tag_concurrency_limits), and the cap on
#: stream runs together that leaves the run queue room for batch runs.
STREAM_GROUP_TAG = "ingest/stream-group"
STREAM_RUN_TAG = "ingest/stream"
TRIGGER_TAG = "ingest/trigger"
SUPERVISOR = "ingest_stream_supervisor"
SUPERVISOR_INTERVAL_S = 30
#: How often the op's thread hands due events to Dagster (a rare commit is reported within this delay).
REPORT_EVERY_S = 0.5
#: The supervisor's restart rule (docs/DESIGN.md §10.9): 30 s doubling to 10 min, 5 failures in a row.
DEFAULT_POLICY = SupervisionPolicy()
ACTIVE_STATUSES = {
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
}  # fmt: skip


def stream_groups(catalog: Catalog) -> dict[str, list[Dataset]]:
    """The continuous datasets by stream group (``stream_group``, default the source), sorted by group."""
    groups: dict[str, list[Dataset]] = {}
    for dataset in catalog.datasets:
        if dataset.continuous:
            groups.setdefault(dataset.pipeline, []).append(dataset)
    return dict(sorted(groups.items()))


def stream_job_name(group: str) -> str:
    return f"stream__{group}"


class StreamRunConfig(dg.Config):
    """Optional: stop after ``duration_s`` (a clean stop; tests and benchmarks). Default: until terminated."""

    duration_s: float | None = None


# --- the stream job ---------------------------------------------------------------------------------------------


def build_stream_job(group: str, datasets: list[Dataset]) -> dg.JobDefinition:
    names = ", ".join(d.name for d in datasets)

    @dg.op(name=f"serve__{group}", out={},
           description=f"Streams {names} (stream group '{group}') until the run is terminated.")  # fmt: skip
    def _stream(context: dg.OpExecutionContext, config: StreamRunConfig, kafka: KafkaResource, lake: LakeResource):
        yield from run_stream_group(context, group, datasets, kafka.connection(), lake.location(), config.duration_s)

    @dg.job(
        name=stream_job_name(group),
        description=f"The stream of group '{group}': {names} (docs/DESIGN.md §10). Kept running by the sensor "
        f"{SUPERVISOR}; Terminate stops it gracefully (the supervisor starts it again).",
        tags={STREAM_GROUP_TAG: group, STREAM_RUN_TAG: "true"},
        executor_def=dg.in_process_executor,
    )
    def _job() -> None:
        _stream()

    return _job


class _Warnings(logging.Handler):
    """The stream's warnings and errors, queued for the op's thread (they are rate-limited per dataset by the
    loops); its per-commit INFO lines are not kept: the event log must not grow with the commit rate."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)


def run_stream_group(context: dg.OpExecutionContext, group: str, datasets: list[Dataset], kafka: KafkaConnection,
                     lake: LakeLocation, duration_s: float | None = None,
                     settings: StreamSettings | None = None) -> Iterator[StreamEvent]:  # fmt: skip
    """Run the group's stream process until it ends or the run is terminated; yield its Dagster events."""
    events = StreamEvents(datasets, lake, runner="dagster", where=f"Dagster run {context.run_id}")
    warnings = _Warnings()
    log = logging.getLogger(f"ingest_platform.stream.{group}.{context.run_id[:8]}")
    log.propagate, log.level = False, logging.WARNING
    log.addHandler(warnings)
    process = StreamProcess(datasets, kafka, lake, settings or StreamSettings(), on_commit=events.on_commit,
                            on_state=events.on_state, log=log)  # fmt: skip
    ended: dict[str, object] = {}

    def serve() -> None:
        try:
            ended["outcome"] = process.run(duration_s=duration_s)
        except BaseException as error:  # noqa: BLE001 - a crash of the process itself; the op reports it
            ended["error"] = error

    thread = threading.Thread(target=serve, name=f"stream-{group}", daemon=True)
    context.log.info(f"stream group '{group}': streaming {', '.join(d.name for d in datasets)}")
    thread.start()
    interrupted: BaseException | None = None
    done = False
    try:
        try:
            while thread.is_alive():
                thread.join(REPORT_EVERY_S)
                _forward(context, warnings)
                yield from events.take()
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as interrupt:
            interrupted = interrupt
            context.log.info(f"stream group '{group}': termination requested; finishing in-flight commits")
            _stop(process, thread)
        _forward(context, warnings)
        yield from events.take(final=True)
        done = True
    finally:
        if not done:  # closed between two events (an interrupt while Dagster handled one) or an error: stop
            _stop(process, thread)  # gracefully all the same and record what is pending without yielding
            for event in events.take(final=True):
                context.log_event(event)
    _conclude(context, group, ended, interrupted)


def _forward(context: dg.OpExecutionContext, warnings: _Warnings) -> None:
    while True:
        try:
            record = warnings.records.get_nowait()
        except queue.Empty:
            return
        (context.log.error if record.levelno >= logging.ERROR else context.log.warning)(record.getMessage())


def _stop(process: StreamProcess, thread: threading.Thread) -> None:
    """Stop and wait for the drain (bounded by the process's stop deadline); further interrupts only wait."""
    process.stop()
    while thread.is_alive():
        try:
            thread.join(REPORT_EVERY_S)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            continue


def _conclude(context: dg.OpExecutionContext, group: str, ended: dict, interrupted: BaseException | None) -> None:
    """The run's end: CANCELED when Dagster terminated it, SUCCESS after a clean stop, FAILURE when the
    process crashed or every dataset stopped on an error (the supervisor restarts it with backoff)."""
    if "error" in ended:
        error = ended["error"]
        raise dg.Failure(f"stream group '{group}': the stream process crashed: {type(error).__name__}: {error}")
    outcome = ended.get("outcome")
    if interrupted is not None:
        run = context.instance.get_run_by_id(context.run_id)
        if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            raise interrupted  # terminated from Dagster: the run ends CANCELED
        context.log.info(f"stream group '{group}': stopped on a signal after finishing its commits")
        return
    if outcome is not None and outcome.reason == "no datasets left" and outcome.failed:
        reasons = "; ".join(f"{name}: {message}" for name, message in sorted(outcome.failed.items()))
        raise dg.Failure(f"stream group '{group}': every dataset stopped on an error: {reasons}",
                         metadata={"failed": dg.MetadataValue.json(outcome.failed)})  # fmt: skip
    context.log.info(f"stream group '{group}': stopped ({getattr(outcome, 'reason', 'unknown')})")


# --- the supervisor ----------------------------------------------------------------------------------------------


def _now() -> float:
    """The tick's clock (a function, so tests can move it)."""
    return time.time()


def _run_fact(instance: dg.DagsterInstance, record: dg.RunRecord, with_message: bool) -> RunFact:
    run = record.dagster_run
    if run.status in ACTIVE_STATUSES:
        state = ACTIVE
    elif run.status == dg.DagsterRunStatus.FAILURE:
        state = FAILED
    else:
        state = ENDED
    message = _failure_message(instance, run.run_id) if with_message and state == FAILED else None
    return RunFact(run.run_id, state, run.status.value, record.start_time, record.end_time, message)


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The failed step's error (a ``dg.Failure`` names the datasets and why), else the run failure's message."""
    for event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        records = instance.get_records_for_run(run_id, of_type=event_type, limit=1).records
        if records:
            event = records[0].event_log_entry.dagster_event
            data = event.event_specific_data if event is not None else None
            error = getattr(data, "error", None)
            user = getattr(data, "user_failure_data", None)
            return (user.description if user is not None and user.description else None) or (
                error.message.strip() if error is not None else event.message if event is not None else None)
    return None


def build_supervisor(catalog: Catalog, jobs: dict[str, dg.JobDefinition], policy: SupervisionPolicy | None = None,
                     interval_s: int = SUPERVISOR_INTERVAL_S) -> dg.SensorDefinition:  # fmt: skip
    """Keeps one stream run alive per group whose datasets run on Dagster (``stream_runner: dagster``)."""
    policy = policy or DEFAULT_POLICY
    groups = stream_groups(catalog)
    external = sorted(g for g, members in groups.items() if members[0].stream_runner == "external")

    @dg.sensor(
        name=SUPERVISOR,
        jobs=list(jobs.values()) or None,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Keeps one stream run per stream group alive: starts it, restarts it after a failure with "
        "backoff, gives up after repeated failures (the reason is on the tick); skips groups whose "
        "stream_runner is external (docs/DESIGN.md §10.9).",
    )
    def ingest_stream_supervisor(context: dg.SensorEvaluationContext):
        now = _now()
        reported: dict[str, str] = _cursor(context.cursor)
        requests, lines, events = [], [], []
        for group, job in jobs.items():
            records = context.instance.get_run_records(
                dg.RunsFilter(tags={STREAM_GROUP_TAG: group}), limit=policy.max_failures + 1)
            facts = [_run_fact(context.instance, r, with_message=i == 0) for i, r in enumerate(records)]
            decision = decide(job.name, facts, now, policy)
            lines.append(f"{group}: {decision.reason}")
            if decision.action == START:
                requests.append(dg.RunRequest(
                    job_name=job.name, run_key=decision.run_key,
                    tags={STREAM_GROUP_TAG: group, TRIGGER_TAG: "supervisor"},
                ))  # fmt: skip
            elif decision.action == GAVE_UP and reported.get(group) != facts[0].run_id:
                reported[group] = facts[0].run_id  # the failed `stream` checks are reported once per give-up
                context.log.error(f"stream group '{group}': {decision.reason}")
                events += [_gave_up_evaluation(d, decision.reason) for d in groups[group]]
            elif decision.action == RUNNING:
                reported.pop(group, None)
        if external:
            lines.append(f"stream_runner external (served by stream workers, not supervised): {', '.join(external)}")
        if not groups:
            lines.append("no continuous dataset in the catalog")
        summary = " | ".join(lines)
        context.log.info(summary)
        return dg.SensorResult(run_requests=requests, asset_events=events, cursor=_dump(reported),
                               skip_reason=None if requests else summary)  # fmt: skip

    return ingest_stream_supervisor


def _gave_up_evaluation(dataset: Dataset, reason: str) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(dataset.asset_path), check_name=STREAM_CHECK, passed=False,
        severity=dg.AssetCheckSeverity.ERROR, description=f"not streaming: the supervisor {reason}",
        metadata={"status": dg.MetadataValue.text("not supervised"),
                  "stream_group": dg.MetadataValue.text(dataset.pipeline)},
    )  # fmt: skip


def _cursor(raw: str | None) -> dict[str, str]:
    import json

    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dump(value: dict[str, str]) -> str:
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- the `stream` check ------------------------------------------------------------------------------------------


def build_stream_check(dataset: Dataset) -> dg.AssetChecksDefinition:
    """Reported by the stream (``defs/stream_events.py``), never computed: executed (a UI materialization
    selects it), it repeats its latest report, or passes saying no stream has reported yet."""
    key = dg.AssetCheckKey(dg.AssetKey(dataset.asset_path), STREAM_CHECK)

    @dg.asset_check(
        asset=dataset.asset_path, name=STREAM_CHECK, blocking=False,
        description=f"The stream serves this dataset (stream group '{dataset.pipeline}', runner "
        f"{dataset.stream_runner}): reported when its loop starts (passed) and when it stops on an error "
        "(failed, with the reason).",
    )  # fmt: skip
    def _stream_check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
        event = latest.event.dagster_event if latest is not None and latest.event is not None else None
        evaluation = event.event_specific_data if event is not None else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.ERROR,
                                       description="no stream has reported on this dataset yet")  # fmt: skip
        return dg.AssetCheckResult(passed=evaluation.passed, severity=evaluation.severity,
                                   description=f"as last reported: {evaluation.description or ''}",
                                   metadata=dict(evaluation.metadata))  # fmt: skip

    return _stream_check


def stream_check_keys(catalog: Catalog) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(dg.AssetKey(d.asset_path), STREAM_CHECK) for d in catalog.datasets if d.continuous]


def stream_definitions(catalog: Catalog, policy: SupervisionPolicy | None = None) -> dg.Definitions:
    """The stream jobs of the groups Dagster runs, the supervisor, the ``stream`` checks (merge into the code
    location). Nothing without continuous datasets."""
    groups = stream_groups(catalog)
    if not groups:
        return dg.Definitions()
    jobs = {g: build_stream_job(g, members) for g, members in groups.items() if members[0].stream_runner == "dagster"}
    checks = [build_stream_check(d) for members in groups.values() for d in members]
    return dg.Definitions(jobs=list(jobs.values()), sensors=[build_supervisor(catalog, jobs, policy)],
                          asset_checks=checks)  # fmt: skip
