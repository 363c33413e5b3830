"""Runs holding a dataset's pool slot, whether their process still lives, and freeing the slot of a dead one.

Each dataset's pool allows one run (dagster.yaml), so a run killed with SIGKILL blocks its dataset: Dagster
keeps it STARTED and its slot claimed, and every later run waits ("Step blocked by limit for pool ...").
docs/DESIGN.md §7 "Killed runs": with a daemon (``dagster dev``) the ``LocalRunLauncher``'s health check
lets run monitoring fail such a run, and the daemon frees its slot; without one, ``ingest-platform runs
release <dataset>`` does it, only for runs whose process is gone. The table is never at risk either way: a
second writer fails at the ledger guard (§2).

A run's process is the first ``pid`` its engine events name: the run worker's (``Started process for
run``), or the process executing the steps (``Executing steps in process``, also the ``dagster asset
materialize`` command). It is looked up on this machine, so the check holds for instances whose runs run
on the host that asks (``dagster dev``, a single VM); Kubernetes launchers check their pods themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from ingest_platform.defs.sensors import DATASET_TAG
from ingest_platform.processes import process_started_at

#: Run states that still hold slots while they last.
UNFINISHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


@dataclass(frozen=True)
class RunProcess:
    run_id: str
    status: dg.DagsterRunStatus
    pid: int | None  # None: the run never recorded one (it did not start executing)
    alive: bool | None  # None: unknown (no pid)

    def describe(self) -> str:
        where = f"process {self.pid} " + ("is running" if self.alive else "is gone") if self.pid else "no process"
        return f"run {self.run_id} ({self.status.value}, {where})"


def run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunProcess:
    """The run's process and whether it still runs (on this machine)."""
    connection = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20)
    for record in connection.records:
        event = record.event_log_entry.dagster_event
        metadata = getattr(event.event_specific_data, "metadata", None) or {} if event else {}
        pid = metadata.get("pid")
        if pid is not None:
            number = int(getattr(pid, "value", pid))
            alive = process_alive(number, started_by=record.event_log_entry.timestamp)
            return RunProcess(run.run_id, run.status, number, alive)
    return RunProcess(run.run_id, run.status, None, None)


def process_alive(pid: int, started_by: float) -> bool:
    """Whether ``pid`` runs and is the same process (started no later than ``started_by``, Unix seconds),
    not a later one that reused the number."""
    started = process_started_at(pid)
    return started is not None and started <= started_by + 2  # /proc counts clock ticks, rounded


def pool_holders(instance: dg.DagsterInstance, pool: str) -> list[RunProcess]:
    """The runs holding slots of ``pool`` now, with their processes."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    holders = []
    for run_id in sorted(info.active_run_ids):
        run = instance.get_run_by_id(run_id)
        if run is not None:
            holders.append(run_process(instance, run))
    return holders


def tagged_runs(instance: dg.DagsterInstance, dataset: str, exclude: set[str]) -> list[RunProcess]:
    """Unfinished runs tagged ``ingest/dataset: <dataset>`` (ingest and maintenance runs) not in ``exclude``: the
    run queue admits one per dataset (dagster.yaml) and the lag sensor counts them as running, so a killed one
    blocks its dataset even when it holds no pool slot (a maintenance run, or one killed before its step)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={DATASET_TAG: dataset}, statuses=list(UNFINISHED)))
    return [run_process(instance, run) for run in runs if run.run_id not in exclude]


@dataclass(frozen=True)
class Release:
    released: list[RunProcess]  # dead runs failed and their slots freed (or finished runs' slots freed)
    kept: list[RunProcess]  # runs whose process runs (or is unknown): left alone


def release_dead_runs(instance: dg.DagsterInstance, pool: str, dataset: str) -> Release:
    """Fail every run holding ``pool``, or unfinished and tagged with the dataset, whose process is gone, and free
    its slots; leave live ones alone."""
    released, kept = [], []
    holders = pool_holders(instance, pool)
    for holder in holders + tagged_runs(instance, dataset, {h.run_id for h in holders}):
        finished = holder.status not in UNFINISHED
        if not finished and holder.alive is not False:
            kept.append(holder)
            continue
        if not finished:
            run = instance.get_run_by_id(holder.run_id)
            instance.report_run_failed(
                run,
                f"Marked failed by `ingest-platform runs release {dataset}`: its process {holder.pid} is gone "
                "(killed?). The table is intact: a run that dies commits nothing more, and the next run starts "
                "at the table's ledger.",
            )
        instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
        released.append(holder)
    return Release(released, kept)


def blocked_message(instance: dg.DagsterInstance, pool: str, dataset: str) -> str:
    """What a run waiting for ``pool`` is told: who holds it, and how to free it if that run is dead."""
    holders = pool_holders(instance, pool)
    dead = [h for h in holders if h.alive is False or h.status not in UNFINISHED]
    who = "; ".join(h.describe() for h in holders) or "no run (the slot is about to be free)"
    advice = (
        f"That run is dead (killed?) and holds the slot until it is released: run `ingest-platform runs release "
        f"{dataset}` (it fails the dead run and frees its slot), or free the slot in the UI (Deployment → "
        "Concurrency); with a Dagster daemon running (`dagster dev`), run monitoring does it within about "
        "two minutes."
        if dead
        else "This run starts when that one ends."
    )
    return (
        f"Dataset '{dataset}' is being ingested by another run: pool {pool} (one run at a time) is held by {who}. "
        f"{advice} The table is never at risk: two writers cannot both commit (the ledger guard)."
    )
