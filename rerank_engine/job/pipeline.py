"""The Ray Data wiring — the only place that sets resources, pool sizes and batch sizes.

The job: read Parquet → recall (CPU actors) or logged candidates → tokenize (CPU actors) → rerank (GPU
actors where the cluster has GPUs, CPU actors otherwise) → threshold and top-k → (explode) → write.
One row per query throughout: candidates travel as list columns, so nothing shuffles or groups.
The corpus embedding of the index build (`index_build`): read → bi-encoder actors → write
(`embedding_pipeline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rerank_engine.config import EmbedConfig, JobConfig, ResourcesConfig
from rerank_engine.errors import ConfigError
from rerank_engine.job.dedupe import FanOut
from rerank_engine.job.recall_stages import QueryEmbedStage, RecallSpec, RecallStage, ShardSearchStage
from rerank_engine.job.score_cache import CacheRef
from rerank_engine.job.stages import RerankStage, TokenizeStage, finalize, logged_candidates
from rerank_engine.quality.score_policy import ScorePolicy


@dataclass(frozen=True)
class PipelineInputs:
    files: list[str]
    n_rows: int
    logged: bool
    corpus: str
    index_dir: str | None
    model_source: str  # what the tokenize and rerank actors export (cached per node) and load
    precisions: tuple[str, ...]  # the variants the rerank actors score (`exporting.needed_precisions`)
    policy: ScorePolicy  # the score written and thresholded, and the models named in the output
    run_id: str
    filesystem: object = None
    cache: CacheRef | None = None  # the score cache of this model, precision and tokenizer
    index_shard_bytes: tuple[int, ...] = ()  # per shard of a sharded index: its file size


def cluster_gpus() -> int:
    """The GPU probe: 1 where the Ray cluster has a GPU, else 0 (what a GPU actor of a pool asks for)."""
    import ray

    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


IO_SLOTS = 3  # read / finalize / write tasks that must find room on a node beside the actors


def _actor_shares(r: ResourcesConfig, *, logged: bool, shards: int) -> list[float]:
    """The CPU share of every actor of one scoring pass."""
    recall = [] if logged else [r.recall_cpus] * r.recall_actors + [r.shard_cpus] * (shards * r.shard_actors)
    return recall + [r.tokenize_cpus] * r.tokenize_actors + [r.rerank_cpus] * r.rerank_actors


def actor_cpus(r: ResourcesConfig, *, logged: bool, shards: int) -> float:
    """The CPUs the actors of one scoring pass reserve together."""
    return sum(_actor_shares(r, logged=logged, shards=shards))


def fit_scale(shares: list[float], node_cpus: list[float], io_cpus: float) -> float:
    """The factor (at most 1) by which actors of these CPU shares fit the nodes found, each node keeping
    `IO_SLOTS × io_cpus` free: sized per node, not from the total — the actors share what the nodes
    leave, and none asks for more than the largest node leaves. 1.0 where no node has CPUs yet (an
    autoscaler will bring them); a head with no task CPUs is not counted."""
    node_cpus = [c for c in node_cpus if c > 0]
    if not node_cpus or not shares:
        return 1.0
    room = [max(0.0, c - IO_SLOTS * io_cpus) for c in node_cpus]
    scale = min(1.0, sum(room) / sum(shares), max(room) / max(shares))
    if scale <= 0:
        raise ConfigError(
            f"the Ray cluster's nodes have {sorted(node_cpus)} CPUs: none leaves room for the actors "
            f"beside {IO_SLOTS} io tasks of resources.io_cpus={io_cpus}"
        )
    return scale


def fit_to_cluster(
    r: ResourcesConfig, node_cpus: list[float], *, logged: bool, shards: int = 0
) -> tuple[ResourcesConfig, float]:
    """The job's actor CPU shares scaled by `fit_scale`, and the scale (1.0: unchanged). Off with
    `resources.fit_to_nodes: false` (an autoscaling cluster). A share is only a scheduling token
    (threads are set apart), so a smaller share costs no speed."""
    if not r.fit_to_nodes:
        return r, 1.0
    scale = fit_scale(_actor_shares(r, logged=logged, shards=shards), node_cpus, r.io_cpus)
    if scale == 1.0:
        return r, 1.0
    return r.model_copy(
        update={
            "recall_cpus": r.recall_cpus * scale,
            "shard_cpus": r.shard_cpus * scale,
            "tokenize_cpus": r.tokenize_cpus * scale,
            "rerank_cpus": r.rerank_cpus * scale,
        }
    ), scale


def node_cpus() -> list[float]:
    """The CPUs of each live node of the Ray cluster."""
    import ray

    return [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]


def rerank_gpus(config: JobConfig) -> int:
    if config.resources.rerank_gpus != "auto":
        return int(config.resources.rerank_gpus)
    return cluster_gpus()


def _read_parquet(paths, **kwargs):
    """`ray.data.read_parquet` with Ray Data's V1 reader. The V2 reader starts with a ListFiles task
    that asks for a whole CPU whatever `num_cpus` says; once the actors hold their shares, a cluster of
    1-CPU nodes has no whole CPU left and the run waits forever. The V1 reader's tasks take `num_cpus`."""
    import ray
    from ray.data import DataContext

    context = DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        context.use_datasource_v2 = v2


def _read(config: JobConfig, inp: PipelineInputs, block_rows: int):
    """The query log's files (already listed, see `files`) as blocks of about `block_rows` rows, each
    read task taking `io_cpus`."""
    return _read_parquet(  # partitioning=None: a `dt=…` folder in a path is not a column
        inp.files,
        filesystem=inp.filesystem,
        num_cpus=config.resources.io_cpus,
        override_num_blocks=max(1, math.ceil(inp.n_rows / block_rows)),
        partitioning=None,
    )


def build_fanout(config: JobConfig, inp: PipelineInputs, results, keys: list[str], key):
    """The input rows again, each joined to the results of its distinct query (see `dedupe`), in blocks
    of `fanout_block_rows`: the join is cheap per row, so small blocks would cost a task and an output
    file each."""
    from ray.data import ActorPoolStrategy

    r = config.resources
    return _read(config, inp, r.fanout_block_rows).map_batches(
        FanOut,
        fn_constructor_kwargs={
            "columns": config.columns,
            "results": results,
            "keys": keys,
            "logged": inp.logged,
            "key": key,
        },
        batch_format="pyarrow",
        batch_size=r.fanout_block_rows,
        compute=ActorPoolStrategy(size=1),
        num_cpus=config.resources.io_cpus,
    )


def build_pipeline(config: JobConfig, inp: PipelineInputs):
    from ray.data import ActorPoolStrategy

    r = config.resources
    gpus = rerank_gpus(config)
    ds = _read(config, inp, r.block_rows)
    if inp.logged:
        ds = ds.map_batches(
            logged_candidates,
            fn_kwargs={"columns": config.columns},
            batch_format="pyarrow",
            batch_size=r.recall_batch_rows,
            num_cpus=r.io_cpus,
        )
    elif config.recall.shard_stages and len(inp.index_shard_bytes) > 1:
        ds = _sharded_recall(ds, config, inp)
    else:
        ds = ds.map_batches(
            RecallStage,
            fn_constructor_kwargs={
                "spec": RecallSpec.of(config, inp.index_dir),
                "threads": max(1, round(r.recall_cpus)),
            },
            batch_format="pyarrow",
            batch_size=r.recall_batch_rows,
            compute=ActorPoolStrategy(size=r.recall_actors),
            num_cpus=r.recall_cpus,
        )
    ds = ds.map_batches(
        TokenizeStage,
        fn_constructor_kwargs={
            "corpus_path": inp.corpus,
            "model_source": inp.model_source,
            "precisions": inp.precisions,
            "columns": config.columns,
            "tokenizer": config.tokenizer,
            "cache": inp.cache,
        },
        batch_format="pyarrow",
        batch_size=r.rerank_batch_rows,
        compute=ActorPoolStrategy(size=r.tokenize_actors),
        num_cpus=r.tokenize_cpus,
    )
    ds = ds.map_batches(
        RerankStage,
        fn_constructor_kwargs={
            "engine": config.engine(inp.model_source, threads=r.rerank_threads),
            "gpu": bool(gpus),
            "cache": inp.cache,
        },
        batch_format="pyarrow",
        batch_size=r.rerank_batch_rows,
        compute=ActorPoolStrategy(size=r.rerank_actors),
        num_cpus=r.rerank_cpus,
        num_gpus=gpus,
    )
    return ds.map_batches(
        finalize,
        fn_kwargs={
            "k_rerank": config.k_rerank,
            "policy": inp.policy,
            "run_id": inp.run_id,
        },
        batch_format="pyarrow",
        num_cpus=r.io_cpus,
    )


def _sharded_recall(ds, config: JobConfig, inp: PipelineInputs):
    """Query embeddings, then one actor pool per shard, each reserving its shard's size in memory so that
    Ray places the shards on nodes where they fit; the running top-k travels with the rows."""
    from ray.data import ActorPoolStrategy

    r = config.resources
    spec = RecallSpec.of(config, inp.index_dir)
    ds = ds.map_batches(
        QueryEmbedStage,
        fn_constructor_kwargs={"spec": spec, "threads": max(1, round(r.recall_cpus))},
        batch_format="pyarrow",
        batch_size=r.recall_batch_rows,
        compute=ActorPoolStrategy(size=r.recall_actors),
        num_cpus=r.recall_cpus,
    )
    last = len(inp.index_shard_bytes) - 1
    for shard, size in enumerate(inp.index_shard_bytes):
        ds = ds.map_batches(
            ShardSearchStage,
            fn_constructor_kwargs={"spec": spec, "shard": shard, "last": shard == last},
            batch_format="pyarrow",
            batch_size=r.recall_batch_rows,
            compute=ActorPoolStrategy(size=r.shard_actors),
            num_cpus=r.shard_cpus,
            memory=size,
        )
    return ds


def write_output(ds, config: JobConfig, folder) -> None:
    """The scored rows (one row per kept pair with `exploded`) written as Parquet into `folder`."""
    r = config.resources
    if config.exploded:
        from rerank_engine.job.stages import explode

        cols = config.columns
        ds = ds.map_batches(
            explode,
            fn_kwargs={"query_id": cols.query_id, "query": cols.query},
            batch_format="pyarrow",
            num_cpus=r.io_cpus,
        )
    ds.write_parquet(str(folder), ray_remote_args={"num_cpus": r.io_cpus})


def embedding_pipeline(
    corpus: str,
    columns: list[str],
    n_rows: int,
    folder,
    *,
    embed: EmbedConfig,
    stage: dict,
    doc_id: str = "doc_id",
):
    """Embed the corpus's `columns` (its `doc_id` column written as doc_id) with
    `recall_stages.EmbedStage(**stage)` in `embed.actors` actors (a GPU each where the cluster has one)
    and write Parquet into `folder`. Read with the V1 reader and the actor share fitted to the nodes
    found, as the job is, so a 1-CPU node does not stall."""
    from ray.data import ActorPoolStrategy

    from rerank_engine.job.recall_stages import EmbedStage

    cpus = embed.cpus * fit_scale([embed.cpus] * embed.actors, node_cpus(), embed.io_cpus)
    ds = _read_parquet(
        corpus,
        columns=columns,
        num_cpus=embed.io_cpus,
        override_num_blocks=max(1, n_rows // embed.block_rows),
    )
    if doc_id != "doc_id":
        ds = ds.rename_columns({doc_id: "doc_id"})
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={**stage, "threads": embed.threads},
        batch_format="pyarrow",
        batch_size=embed.batch_rows,
        compute=ActorPoolStrategy(size=embed.actors),
        num_cpus=cpus,
        num_gpus=cluster_gpus(),
    )
    ds.write_parquet(str(folder), ray_remote_args={"num_cpus": embed.io_cpus})
