"""A killed driver's local Ray leaves its agents behind; the next run stops them (#24 finding 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.job.orphans import AGENT_TITLES, orphaned_agents, reap_orphaned_agents

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _table() -> dict[int, tuple[int, str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):
                continue
            found[int(entry.name)] = (ppid, cmdline)
    return found


def _descendants(root: int) -> dict[int, str]:
    table, found, frontier = _table(), {}, {root}
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier}
        found |= {pid: table[pid][1] for pid in children}
        frontier = children
    return found


def _running(pid: int) -> bool:
    """The process exists and is no zombie (an exited child its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _alive(pids) -> set[int]:
    return {pid for pid in pids if _running(pid)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_agents_of_a_killed_drivers_ray_are_found_and_stopped(tmp_path, tiny_export, start_ray_head):
    with start_ray_head(tmp_path, num_cpus=1):  # a live cluster's agents must be kept
        _kill_a_driver_then_reap(tmp_path, tiny_export)


def _kill_a_driver_then_reap(tmp_path: Path, tiny_export: Path) -> None:
    docs = {"d1": "Flood damage is excluded.", "d2": "A 90 day waiting period."}
    pq.write_table(pa.table({"doc_id": list(docs), "text": list(docs.values())}), tmp_path / "corpus.parquet")
    n = 4000  # enough rows that the job is still running when its driver is killed
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(n)],
                "query": [f"flood question {i}" for i in range(n)],
                "candidates": [["d1", "d2"]] * n,
            }
        ),
        tmp_path / "log.parquet",
    )
    cmd = [
        sys.executable, "-m", "jobs.rerank", "--config", "jobs/configs/local.yaml",
        "--input", str(tmp_path / "log.parquet"), "--corpus", str(tmp_path / "corpus.parquet"),
        "--output", str(tmp_path / "out"), "--no-progress",
        "--set", f"model={tiny_export}", "--set", "precision=fp32", "--set", "dedupe_queries=false",
    ]  # fmt: skip
    env = dict(os.environ, RAY_ADDRESS="local")  # a local Ray of its own, as a user's run starts
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 240
    while not any(c.startswith(AGENT_TITLES) for c in seen.values()) or not any(
        "RerankStage" in c for c in seen.values()
    ):
        assert driver.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, f"no rerank actor after 240 s: {sorted(set(seen.values()))}"
        time.sleep(0.5)
        seen |= _descendants(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    agents = {pid for pid, c in seen.items() if c.startswith(AGENT_TITLES)}
    raylets = {pid for pid, c in seen.items() if "/raylet/raylet" in c}
    for _ in range(40):  # the raylet goes down with its driver
        if not _alive(raylets):
            break
        time.sleep(0.5)
    assert not _alive(raylets), "the killed driver's raylet is still running"
    left = _alive(agents)
    assert left, "the agents exited by themselves: nothing for the next run to clean up"
    assert left <= set(orphaned_agents())
    live_head_agents = {pid for pid, (_, c) in _table().items() if c.startswith(AGENT_TITLES)} - left
    assert live_head_agents, "the live head has agents"
    assert not live_head_agents & set(orphaned_agents())

    assert left <= set(reap_orphaned_agents())
    time.sleep(1)
    assert not _alive(agents), "an orphaned agent survived SIGKILL"
    assert _alive(live_head_agents) == live_head_agents  # the live cluster's agents untouched
