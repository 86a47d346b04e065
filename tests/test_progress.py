"""Progress bars: on in a terminal, off in CI and logs, forced by --progress / --no-progress."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine import cli, progress
from rerank_engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_a_terminal_turns_them_on_a_file_off(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV, "")  # so that teardown restores it, whatever the test sets
    monkeypatch.delenv(progress.ENV)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            assert progress.enabled(tty) is True
    finally:
        os.close(master)
    with (tmp_path / "log").open("w") as log:
        assert progress.enabled(log) is False


def test_the_environment_forces_them_either_way(tmp_path, monkeypatch):
    with (tmp_path / "log").open("w") as log:
        monkeypatch.setenv(progress.ENV, "1")
        assert progress.enabled(log) is True
        monkeypatch.setenv(progress.ENV, "off")
        assert progress.enabled(sys.__stderr__) is False
        monkeypatch.setenv(progress.ENV, "maybe")
        with pytest.raises(ConfigError, match="RERANK_PROGRESS='maybe': expected 1"):
            progress.enabled(log)


@pytest.mark.parametrize(("flag", "value"), [("--progress", "1"), ("--no-progress", "0")])
def test_the_flags_set_it_for_this_process_and_its_children(flag, value, monkeypatch):
    monkeypatch.setenv(progress.ENV, "")  # so that teardown restores it, whatever the test sets
    monkeypatch.delenv(progress.ENV)
    args = cli.command_parser("x", "doc", "--x", with_progress=True).parse_args([flag])
    cli.setup(args)
    assert os.environ[progress.ENV] == value


def _run(argv, *, terminal: bool, env: dict) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal (160 columns) or on a pipe; their text."""
    if not terminal:
        done = subprocess.run(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600
        )
        return done.returncode, done.stdout + done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=600)
    finally:
        reader.join(10)
        os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


@pytest.mark.ray
@pytest.mark.slow
def test_ray_data_bars_in_a_terminal_none_in_a_log(tmp_path):
    """`build-index` (a Ray Data job: its corpus embedding) three ways: in a terminal Ray Data draws its
    per-operator bars; with stdout and stderr on pipes (CI, a log) nothing; on pipes with --progress
    Ray's logged progress (its form where there is no terminal)."""
    from rerank_engine.probe_pairs import PASSAGES

    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(PASSAGES))], "text": PASSAGES}), corpus)
    env = {k: v for k, v in os.environ.items() if k not in (progress.ENV, "RAY_ADDRESS")}
    base = [sys.executable, "-m", "jobs.build_index", "--corpus", str(corpus), "--eval-queries", "5"]

    rc, terminal = _run([*base, "--out", str(tmp_path / "a")], terminal=True, env=env)
    assert rc == 0, terminal[-3000:]
    assert "- MapBatches(EmbedStage):" in terminal and "row/s" in terminal

    rc, log = _run([*base, "--out", str(tmp_path / "b")], terminal=False, env=env)
    assert rc == 0, log[-3000:]
    assert '"count": 24' in log  # it ran
    assert "row/s" not in log and "Total Progress" not in log and "EmbedStage): " not in log

    rc, forced = _run([*base, "--out", str(tmp_path / "c"), "--progress"], terminal=False, env=env)
    assert rc == 0, forced[-3000:]
    assert "Total Progress" in forced and "MapBatches(EmbedStage): " in forced


def test_evaluation_scores_in_chunks_with_a_bar_and_keeps_the_order(monkeypatch, capsys):
    from types import SimpleNamespace

    from rerank_engine.quality import evaluation

    calls = []

    def score(queries, passages):  # stands in for the engine: a score that names its pair
        calls.append(len(passages))
        return [float(q[1:]) * 1000 + float(p[1:]) for q, p in zip(queries, passages, strict=True)]

    questions = [SimpleNamespace(text=f"q{i}") for i in range(500)]
    groups = [[f"d{j}" for j in range(20)] for _ in questions]  # 10,000 pairs
    answers = {f"d{j}": f"p{j}" for j in range(20)}
    monkeypatch.setenv(progress.ENV, "1")
    scores = evaluation.score_groups(score, questions, groups, answers, log=lambda _: None)
    assert calls == [4096, 4096, 1808]
    assert scores[0].tolist() == [float(j) for j in range(20)]
    assert scores[499].tolist() == [499_000.0 + j for j in range(20)]
    err = capsys.readouterr().err
    assert "score: 100%" in err and "10000/10000" in err
