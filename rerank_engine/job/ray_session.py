"""Connecting to Ray: the one place `ray.init` is called, by the job and by the index build alike.

    ray = ensure_ray()   # RAY_ADDRESS's cluster, a running local one, or a new local Ray

Ray is imported only when a function here runs.
"""

from __future__ import annotations

import logging
import os

from rerank_engine import progress

log = logging.getLogger(__name__)

_RAY_DATA_PROGRESS = "ray.data._internal.progress"


def ensure_ray():
    """Connect to the cluster in RAY_ADDRESS or a running local one; start a local Ray otherwise."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS", "local") == "local":  # our own local Ray: first, a killed run's
            from rerank_engine.job.orphans import reap_orphaned_agents

            if stopped := reap_orphaned_agents():
                log.warning("stopped %d Ray agents left by a killed run (pids %s)", len(stopped), stopped)
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
        from ray.data import DataContext

        # on where stderr is a terminal, off in CI and logs; --progress / --no-progress force it
        DataContext.get_current().enable_progress_bars = progress.enabled()
        quiet_ray_data_console()
    return ray


def quiet_ray_data_console() -> None:
    """Ray Data's console lines (execution plans, "Dataset ... finished") at this process's log level
    (warning unless --log-level says otherwise); its own log file under the Ray session keeps them all.
    Its logged progress (the form it takes where there is no terminal) passes whenever progress is on."""
    level = logging.getLogger().getEffectiveLevel()
    show_progress = progress.enabled()

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= level or (show_progress and record.name.startswith(_RAY_DATA_PROGRESS))

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # the name Ray Data's logging config gives it
            handler.setLevel(logging.INFO)
            handler.addFilter(keep)
