"""Actor CPU shares sized from the nodes Ray finds (`pipeline.fit_to_cluster`), so no read, finalize or
write task waits forever for room beside the actors (#24, finding 5)."""

import pytest

from rerank_engine.config import ResourcesConfig
from rerank_engine.errors import ConfigError
from rerank_engine.job.pipeline import IO_SLOTS, actor_cpus, fit_to_cluster


def test_a_two_core_node_keeps_the_configured_shares():
    r = ResourcesConfig()
    fitted, scale = fit_to_cluster(r, [2.0], logged=False)
    assert scale == 1.0 and fitted == r


def test_a_one_cpu_node_scales_the_actors_to_leave_room_for_io_tasks():
    r = ResourcesConfig()
    assert actor_cpus(r, logged=False, shards=0) == pytest.approx(1.0)  # the defaults fill 1 CPU
    fitted, scale = fit_to_cluster(r, [1.0], logged=False)
    assert scale == pytest.approx(1.0 - IO_SLOTS * r.io_cpus)
    free = 1.0 - actor_cpus(fitted, logged=False, shards=0)
    assert free >= IO_SLOTS * r.io_cpus - 1e-9  # three io tasks fit beside every actor
    assert fitted.rerank_cpus == pytest.approx(r.rerank_cpus * scale)
    assert fitted.io_cpus == r.io_cpus  # io tasks keep their share


def test_sized_per_node_not_from_the_total():
    # 4 CPUs in all, but no node can hold a 1.5-CPU actor next to its io headroom
    r = ResourcesConfig(rerank_cpus=1.5, recall_cpus=0.25, tokenize_cpus=0.25)
    _, scale = fit_to_cluster(r, [1.0, 1.0, 1.0, 1.0], logged=False)
    assert 1.5 * scale <= 1.0 - IO_SLOTS * r.io_cpus + 1e-9


def test_logged_mode_counts_no_recall_actor_and_shards_count_theirs():
    r = ResourcesConfig()
    assert actor_cpus(r, logged=True, shards=0) == pytest.approx(0.75)
    assert fit_to_cluster(r, [1.0], logged=True)[1] == pytest.approx(0.7 / 0.75)
    assert actor_cpus(r, logged=False, shards=4) == pytest.approx(1.0 + 4 * r.shard_cpus)


def test_a_cluster_with_no_room_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"resources.io_cpus=0.5"):
        fit_to_cluster(ResourcesConfig(io_cpus=0.5), [1.0], logged=False)


def test_not_fitted_when_asked_not_to_or_before_an_autoscaler_brings_cpu_nodes():
    r = ResourcesConfig(fit_to_nodes=False)
    assert fit_to_cluster(r, [1.0], logged=False) == (r, 1.0)
    r = ResourcesConfig(rerank_cpus=2.0)
    assert fit_to_cluster(r, [0.0], logged=False) == (r, 1.0)  # only a head with no task CPUs so far
    assert fit_to_cluster(r, [0.0, 16.0], logged=False) == (r, 1.0)  # the 0-CPU head is not counted


def test_the_cluster_config_autoscales_so_it_is_not_fitted():
    from pathlib import Path

    from rerank_engine.config import load_job_config

    repo = Path(__file__).resolve().parents[1]
    assert load_job_config(repo / "jobs/configs/cluster.yaml", {}).resources.fit_to_nodes is False
    assert load_job_config(repo / "jobs/configs/local.yaml", {}).resources.fit_to_nodes is True
