"""The `rerank-engine` command: its subcommands, their --help, the shared scaffold, an installed copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_engine import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_help_shows_an_example(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rerank-engine {name} ")
    assert f"example:\n  rerank-engine {name} --" in out or f"example:\n  rerank-engine {name} >" in out
    assert "--log-level" in out


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"\n  {name} " in out
    assert "example:\n  rerank-engine sample --out sample" in out


def test_unknown_command_suggests_the_nearest(capsys):
    assert cli.main(["rnu"]) == 2
    assert "unknown command 'rnu'; did you mean 'run'?" in capsys.readouterr().err


def test_python_m_jobs_keeps_working_with_its_own_name_in_the_example():
    done = subprocess.run(
        [sys.executable, "-m", "jobs.nightly", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "example:\n  python -m jobs.nightly --config jobs/configs/nightly_local.yaml" in done.stdout


def test_a_bad_set_is_one_line_on_stderr_and_status_2(tmp_path, capsys):
    from jobs import rerank

    argv = ["--input", "q.parquet", "--corpus", "c.parquet", "--output", str(tmp_path), "--set", "k_rerank"]
    assert rerank.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "rerank job failed: --set expects KEY=VALUE, got 'k_rerank'\n"


@pytest.mark.slow
def test_the_installed_console_script_runs_from_any_folder(tmp_path):
    """A non-editable install of this checkout: the `rerank-engine` script it writes finds the commands'
    modules (jobs/, export/) in the install, not in a checkout it happens to run in."""
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    script = target / "bin" / "rerank-engine"
    assert script.is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = tmp_path / "elsewhere"
    where.mkdir()
    for name in ("sample", "export", "run"):
        done = subprocess.run(
            [str(script), name, "--help"], cwd=where, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"example:\n  rerank-engine {name} --" in done.stdout
    probe = "import jobs.rerank, export; print(jobs.rerank.__file__); print(export.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=where, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(line.startswith(str(target)) for line in done.stdout.split()), done.stdout


def _commands():
    """Every job module with a command line: jobs/*.py with a main, and export."""
    names = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if "def main(" in p.read_text())
    return [f"jobs.{n}" for n in names] + ["export.__main__"]


@pytest.mark.parametrize("module", _commands())
def test_every_command_has_the_scaffold_options(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--log-level {debug,info,warning,error}" in out and "\nexample:\n  python -m " in out


def test_the_library_never_prints():
    """Library code logs through `logging` (quiet unless --log-level asks); only the command line
    (rerank_engine/cli.py) writes a command's output."""
    import ast

    found = []
    for path in sorted((REPO / "rerank_engine").rglob("*.py")):
        if path.name == "cli.py" and path.parent.name == "rerank_engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "print":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize(("level", "shown"), [("warning", False), ("info", True)])
def test_log_level_decides_what_the_library_logs(level, shown):
    code = (
        "import logging\n"
        "from rerank_engine import cli\n"
        "p = cli.command_parser('x', 'doc', '--x')\n"
        f"cli.setup(p.parse_args(['--log-level', {level!r}]))\n"
        "logging.getLogger('rerank_engine.quality.evaluation').info('scored 10 pairs')\n"
        "logging.getLogger('rerank_engine.job.driver').warning('a duplicated id')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert ("INFO rerank_engine.quality.evaluation: scored 10 pairs" in done.stderr) is shown
    assert "WARNING rerank_engine.job.driver: a duplicated id" in done.stderr


@pytest.mark.parametrize(
    "recipe",
    sorted((REPO / "jobs/configs").glob("finetune_*.yaml"))
    + sorted((REPO / "jobs/configs/history").glob("*.yaml")),
    ids=lambda p: p.relative_to(REPO / "jobs/configs").as_posix(),
)
def test_every_kept_finetune_recipe_still_passes_the_recipe_check(recipe):
    """The recipes kept for history reproduce their models only while they still load: each one passes
    the same check as a run's (no key the loop no longer knows)."""
    from rerank_engine.training.recipe import load_recipe

    cfg = load_recipe(recipe)
    assert cfg["data"] == "insuranceqa-data==1.0" and cfg["train"]["steps"] >= 1


def test_the_distillation_recipe_passes_its_check():
    from rerank_engine.training.distill import DistillRecipe
    from rerank_engine.training.recipe import load_recipe

    cfg = load_recipe(REPO / "jobs/configs/distill_insuranceqa.yaml", schema=DistillRecipe)
    assert cfg["teacher"] == "models/insurance-minilm-l6-ce" and cfg["distill"]["steps"] >= 1


def test_a_finetune_recipe_takes_set_and_names_a_bad_key_before_anything_runs(tmp_path, capsys):
    """The recipe file is checked like a job config: `--set train.steps=600` lands in the mapping that
    runs, and an unknown key is one line naming it (and the nearest), with nothing mined or trained."""
    from jobs import finetune_reranker
    from rerank_engine.training.recipe import load_recipe

    recipe = REPO / "jobs/configs/finetune_insuranceqa_v6.yaml"
    cfg = load_recipe(recipe, cli.parse_overrides(["train.steps=600", f"run_dir={tmp_path / 'run'}"]))
    assert cfg["train"]["steps"] == 600 and cfg["run_dir"] == str(tmp_path / "run")
    assert cfg["train"]["lr"] == 7.0e-5  # the rest as the file has it

    argv = ["--config", str(recipe), "--set", f"run_dir={tmp_path / 'run'}", "--set", "train.stepz=600"]
    assert finetune_reranker.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "finetune failed: invalid RecipeConfig: train.stepz: Extra inputs are not permitted"
    )
    assert "steps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
