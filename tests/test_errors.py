"""The typed errors: what `require` tells a user to install names something pyproject.toml provides, and
mismatches a command line can cause are ConfigErrors."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from rerank_engine.errors import ConfigError, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _require_calls() -> list[tuple[str, str | None, str | None]]:
    """(where, extra, package) of every `require(...)` call in the package."""
    calls = []
    for path in sorted((ROOT / "rerank_engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                named = {k.arg: k.value.value for k in node.keywords}
                extra = node.args[1].value if len(node.args) > 1 else named.get("extra")
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", extra, named.get("package")))
    return calls


def test_every_require_names_an_extra_or_a_dependency_that_exists():
    project = _pyproject()
    extras = set(project["optional-dependencies"])
    dependencies = {re.split(r"[\[=<>!~ ]", d, maxsplit=1)[0] for d in project["dependencies"]}
    calls = _require_calls()
    assert len(calls) > 10  # the scan really found them
    for where, extra, package in calls:
        if extra is not None:
            assert extra in extras, f"{where}: no extra {extra!r} in pyproject.toml ({sorted(extras)})"
        else:
            assert package in dependencies, f"{where}: {package!r} is not a dependency in pyproject.toml"


def test_a_missing_module_names_what_to_install():
    with pytest.raises(MissingExtraError, match=r"pip install 'rerank-engine\[data\]'") as err:
        require("rerank_engine_no_such_module", "data")
    assert isinstance(err.value, ImportError)
    with pytest.raises(MissingExtraError, match=r"pip install 'faiss-cpu' \(a dependency of rerank-engine;"):
        require("rerank_engine_no_such_module", package="faiss-cpu")


def test_mismatches_a_command_line_can_cause_are_config_errors(tmp_path):
    """A CLI prints a RerankEngineError as one line and exits 2 (cli.run_main): `compare_models --queries 1`
    and an evaluation reading long passages otherwise than its calibration reach these."""
    from rerank_engine.quality.paired import paired_difference
    from rerank_engine.quality.score_policy import check_scored_as

    one = [(["a"], {"a"})]
    with pytest.raises(ConfigError, match="a paired difference needs at least 2 questions, got 1"):
        paired_difference(one, one)
    calibrated = {"max_length": 256, "long_passages": "chunk_max", "stride": 64}
    with pytest.raises(ConfigError, match="was calibrated reading long passages by"):
        check_scored_as(tmp_path / "threshold.json", calibrated, 256)
    check_scored_as(
        tmp_path / "threshold.json", calibrated, 256, {"long_passages": "chunk_max", "stride": 64}
    )
