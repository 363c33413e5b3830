"""``runs release`` frees a dataset from a killed run that holds no pool slot but carries its ``ingest/dataset``
tag (a maintenance run, a run killed before its step): the run queue admits one such run per dataset and the lag
sensor counts it as running (docs/DESIGN.md §7 "Killed runs"). A real instance; real (exited, running) processes."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
from dagster._core.events import EngineEventData  # what Dagster's own launchers record the pid with

from ingest_platform.defs.run_slots import release_dead_runs
from ingest_platform.defs.sensors import DATASET_TAG


def _started_run(instance: dg.DagsterInstance, dataset: str, pid: int) -> dg.DagsterRun:
    run = instance.add_run(dg.DagsterRun(job_name="maintenance", tags={DATASET_TAG: dataset},
                                         status=dg.DagsterRunStatus.STARTED))  # fmt: skip
    instance.report_engine_event("Started process for run", run,
                                 EngineEventData({"pid": dg.MetadataValue.text(str(pid))}))  # fmt: skip
    return run


def test_a_dead_tagged_run_without_a_slot_is_released_and_a_live_one_kept():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with dg.instance_for_test() as instance:
            dead_run = _started_run(instance, "orders", gone.pid)
            live_run = _started_run(instance, "orders", alive.pid)
            other = _started_run(instance, "payments", gone.pid)
            result = release_dead_runs(instance, "ingest.shop.orders", "orders")
            assert [h.run_id for h in result.released] == [dead_run.run_id]
            assert [h.run_id for h in result.kept] == [live_run.run_id]
            assert instance.get_run_by_id(dead_run.run_id).status == dg.DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(live_run.run_id).status == dg.DagsterRunStatus.STARTED
            assert instance.get_run_by_id(other.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        alive.kill()
        alive.wait()
