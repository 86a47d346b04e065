"""Which Ray Data operators of the driver's newest execution have not finished: what a job that ran
past its timeout was waiting on.

    watch_executions()            # once, before the datasets are built (run_job does it)
    running_operators()           # ["MapBatches(RerankStage) (1 tasks running, 0 done)", ...]

Ray Data announces each execution to the callbacks in its DataContext; the operator list is read from
the executor's topology, which Ray Data keeps internal, so this is best effort: [] where it cannot be
read. Imports ray: load it only where Ray runs.
"""

from __future__ import annotations

import weakref

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback

_EXECUTIONS: list[weakref.ref] = []  # the executors started in this process, newest last


class ExecutionWatcher(ExecutionCallback):
    def before_execution_starts(self, executor) -> None:
        _EXECUTIONS.append(weakref.ref(executor))
        del _EXECUTIONS[:-8]


def watch_executions() -> None:
    """Register the watcher in the current DataContext (idempotent)."""
    callbacks = DataContext.get_current().custom_execution_callback_classes
    if ExecutionWatcher not in callbacks:
        callbacks.append(ExecutionWatcher)


def running_operators() -> list[str]:
    """The unfinished operators of the newest execution, with their running and finished task counts."""
    try:
        executor = _EXECUTIONS[-1]() if _EXECUTIONS else None
        topology = getattr(executor, "_topology", None) or {}
        return [
            f"{op.name} ({op.num_active_tasks()} tasks running, {state.num_completed_tasks} done)"
            for op, state in topology.items()
            if not op.has_execution_finished()
        ]
    except Exception:  # a message about a failure must not fail itself
        return []
