"""The code location's executor: Dagster's default one, which also says what to do when a step waits for a
dataset's pool held by a dead run (docs/DESIGN.md §7 "Killed runs").

A run blocked by a pool slot logs only Dagster's ``Step blocked by limit for pool ingest.<source>.<name>``,
without a daemon forever. Once per pool and run this executor adds who holds the slot and, if that run's
process is gone, the command that frees it (``run_slots.blocked_message``). Every event passes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from ingest_platform.defs.run_slots import blocked_message

#: Prefix of the datasets' pools (``defs/assets.py`` ``pool_name``).
POOL_PREFIX = "ingest."
BLOCKED = "blocked by limit for pool"


class PoolAwareExecutor(dg.Executor):
    def __init__(self, inner: dg.Executor):
        self._inner = inner

    @property
    def retries(self):  # noqa: ANN201 - Dagster's RetryMode
        return self._inner.retries

    @property
    def step_dependency_config(self):  # noqa: ANN201 - Dagster's StepDependencyConfig
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:  # noqa: ANN001 - Dagster's
        told: set[str] = set()
        for event in self._inner.execute(plan_context, execution_plan):
            yield event
            pool = _blocked_pool(event)
            if pool and pool.startswith(POOL_PREFIX) and pool not in told:
                told.add(pool)
                try:
                    message = blocked_message(plan_context.instance, pool, pool.rsplit(".", 1)[-1])
                except Exception as error:  # noqa: BLE001 - advice must never break a run
                    message = f"pool {pool} is held by another run ({error!r})"
                plan_context.log.warning(message)


def _blocked_pool(event: dg.DagsterEvent) -> str | None:
    if event.event_type_value != "ENGINE_EVENT" or BLOCKED not in (event.message or ""):
        return None
    return event.message.rsplit(" ", 1)[-1]


@dg.executor(
    name="ingest_executor",
    config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
    requirements=lambda config: dg.multi_or_in_process_executor.get_requirements(config),
)
def ingest_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's default executor (multiprocess, or in process), with the advice above."""
    return PoolAwareExecutor(dg.multi_or_in_process_executor.executor_creation_fn(init_context))


def executor_definitions() -> dg.Definitions:
    return dg.Definitions(executor=ingest_executor)
