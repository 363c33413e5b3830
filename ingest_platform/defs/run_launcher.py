"""The run launcher of local instances (dagster.yaml: ``dagster dev``, a single host): Dagster's default one,
plus the health check that lets run monitoring see a killed run (docs/DESIGN.md §7 "Killed runs").

``DefaultRunLauncher`` has no health check, so run monitoring never failed a run whose worker was killed:
it stayed STARTED and held its dataset's pool slot for good. Here a STARTED run whose process is gone
(``run_slots.run_process``) is reported FAILED; the daemon then marks it failed and frees its slots after
``free_slots_after_run_end_seconds``.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

from ingest_platform.defs.run_slots import run_process


class LocalRunLauncher(dg.DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        process = run_process(self._instance, run)
        if process.alive is False:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's process {process.pid} is gone (killed?)")
        if process.alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has not recorded its process yet")
