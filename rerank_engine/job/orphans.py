"""Ray agents that a killed driver's local cluster leaves behind, found and stopped by the next run.

`ray.init()` starts the GCS and the raylet bound to the driver: a SIGKILLed driver takes them down.
The raylet's dashboard and runtime-env agents are not bound that way. They outlive it by one to two
minutes and do not always answer SIGTERM. An agent whose raylet is gone serves nothing, so a run that
starts its own local Ray first stops such agents of this user (`reap_orphaned_agents`).

Linux only (it reads /proc); elsewhere it finds nothing. Light module.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
RAYLET = "/raylet/raylet"  # the raylet's executable path, as its command line shows it


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, uid, command line) of every readable process still running."""
    found = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            uid = entry.stat().st_uid
        except OSError:  # gone meanwhile, or not ours to read
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":  # a zombie has exited already
            found[int(entry.name)] = (int(ppid), uid, cmdline.strip())
    return found


def orphaned_agents() -> list[int]:
    """This user's Ray agents whose parent is no longer a raylet."""
    procs, me = _processes(), os.getuid()
    return [
        pid
        for pid, (ppid, uid, cmdline) in procs.items()
        if uid == me and cmdline.startswith(AGENT_TITLES) and RAYLET not in procs.get(ppid, (0, 0, ""))[2]
    ]


def reap_orphaned_agents() -> list[int]:
    """SIGKILL every agent `orphaned_agents` finds; the pids stopped."""
    stopped = []
    for pid in orphaned_agents():
        try:
            os.kill(pid, signal.SIGKILL)
            stopped.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return stopped
