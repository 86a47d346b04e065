"""`rerank-engine config`: the default job config described from the config classes; unknown keys
are errors that name the nearest valid key."""

from __future__ import annotations

import re

import pytest
import yaml

from rerank_engine import cli
from rerank_engine.config import JobConfig, _nested, describe_defaults, load_job_config
from rerank_engine.errors import ConfigError
from rerank_engine.job.nightly import load_nightly_config


def _leaf_keys(model, prefix=""):
    for name, field in model.model_fields.items():
        nested = _nested(field.annotation)
        if nested is not None:
            yield from _leaf_keys(nested, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_the_described_defaults_load_back_to_the_defaults():
    text = describe_defaults(JobConfig)
    assert JobConfig.build(**yaml.safe_load(text)) == JobConfig()


def test_every_key_is_there_under_a_comment_describing_it():
    lines = describe_defaults(JobConfig).splitlines()
    seen, parents = [], []
    for i, line in enumerate(lines):
        m = re.fullmatch(r"( *)([a-z_]+):(.*)", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        parents = parents[:depth]
        if not m.group(3):  # a section: its own comment, then its keys
            parents.append(m.group(2))
        else:
            seen.append(".".join([*parents, m.group(2)]))
        comment = lines[i - 1].strip()
        assert comment.startswith("# ") and len(comment) > 12, f"{line!r} has no description"
        assert not comment.startswith("# None ["), f"{line!r} has no description"
    assert seen == list(_leaf_keys(JobConfig))


def test_the_config_command_prints_them(capsys):
    assert cli.main(["config"]) == 0
    assert capsys.readouterr().out == describe_defaults(JobConfig)


def test_an_unknown_yaml_key_suggests_the_nearest(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("k_rerank: 3\nresources:\n  rerank_actor: 2\n")
    with pytest.raises(ConfigError) as err:
        load_job_config(path)
    assert "resources.rerank_actor: Extra inputs are not permitted (got 2); " in str(err.value)
    assert "did you mean 'resources.rerank_actors'?" in str(err.value)


def test_an_unknown_key_without_a_near_one_lists_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_job_config(None, {"tokenizer.zzz": 1})
    assert "tokenizer.zzz: Extra inputs are not permitted (got 1); valid keys under tokenizer: " in str(
        err.value
    )
    assert "max_length, max_query_share" in str(err.value)


def test_an_unknown_set_key_fails_the_command_with_the_suggestion(tmp_path, capsys):
    from jobs import rerank

    argv = ["--input", "q.parquet", "--corpus", "c.parquet", "--output", str(tmp_path / "out")]
    assert rerank.main([*argv, "--set", "k_rerankk=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rerank job failed: invalid JobConfig: k_rerankk: Extra inputs are not permitted")
    assert "did you mean 'k_rerank'?" in err


def test_a_nightly_job_key_is_suggested_under_job(tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text(
        "input_template: logs/dt={date}\noutput_template: out/dt={date}\ncorpus: c.parquet\n"
        "job:\n  k_recal: 9\n"
    )
    with pytest.raises(ConfigError) as err:
        load_nightly_config(path)
    assert "job.k_recal: Extra inputs are not permitted (got 9); did you mean 'job.k_recall'?" in str(
        err.value
    )
