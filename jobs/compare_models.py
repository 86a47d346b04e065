"""Is a candidate reranker better than the baseline? Both rerank the same recall top-20, paired by question.

    python -m jobs.compare_models --baseline models/insurance-minilm-l6-ce \
        --candidate artifacts/candidate/insurance-minilm-l6-ce --split valid --queries 500

`--skip M` starts after the first M questions: compare on questions neither model's calibration
(`jobs.calibrate --queries 500` fits on the first 500) nor its checkpoint choice has seen.

Each model is scored as `jobs.evaluate` scores it (fp32 ONNX; scores cached under --scores-cache, so a
model calibrated on the same questions scores nothing new), at the max_length it was calibrated at, and
fused with the recall cosine by its own `fusion.json` where it has one, as the job serves it. Prints each
model's NDCG@5 and, question by question, candidate minus baseline: the mean, its standard error, a
bootstrap 95 % interval, and wins and losses with a sign test. Choose on valid (the default); test is for
reporting the model chosen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rerank_engine import cli
from rerank_engine.errors import ConfigError
from rerank_engine.quality import evaluation
from rerank_engine.quality.metrics import ndcg_at_k
from rerank_engine.quality.paired import paired_difference
from rerank_engine.quality.score_policy import ScorePolicy, calibrated_max_length

_log_info = logging.getLogger(__name__).info

K = 5


def ranked(model, questions, answers, recall, candidates, cosines, *, precision, cache_dir, log):
    """(model id, how it ranks, [(top-K ids, relevant ids)] per question) for one model."""
    max_length = calibrated_max_length(model) or 256
    model_id, _, sc = evaluation.score_cascade(
        model, questions, candidates, answers, cache_dir, precision=precision, max_length=max_length, log=log
    )
    policy = ScorePolicy.for_evaluation(model, model_id, recall[0].model_id, max_length=max_length)
    fusion = policy.fusion if policy is not None else None
    how = f"alone, max_length {max_length}"
    if fusion is not None:
        sc = evaluation.fused_cascade(sc, fusion, cosines)
        how = f"fused (recall weight {fusion.recall_weight:g}), max_length {max_length}"
    runs = [(ids, rel) for (ids, _), rel in zip(sc.reranked(K), sc.relevant, strict=True)]
    return model_id, how, runs


def compare(
    baseline,
    candidate,
    questions,
    answers,
    recall,
    *,
    k_recall: int = 20,
    precision: str = "fp32",
    cache_dir: str | Path = ".cache/scores",
    log=_log_info,
) -> dict:
    """The two models on the same questions' recall top-`k_recall`, and their paired difference."""
    candidates, cosines = evaluation.recall_top_k(questions, recall, k_recall)
    out, runs = {}, {}
    for role, model in (("baseline", baseline), ("candidate", candidate)):
        model_id, how, runs[role] = ranked(
            model,
            questions,
            answers,
            recall,
            candidates,
            cosines,
            precision=precision,
            cache_dir=cache_dir,
            log=log,
        )
        ndcg = float(np.mean([ndcg_at_k(ids, rel, K) for ids, rel in runs[role]]))
        out[role] = {"model": str(model), "model_id": model_id, "scored": how, f"ndcg@{K}": round(ndcg, 4)}
    out["candidate_minus_baseline"] = paired_difference(runs["candidate"], runs["baseline"], K)
    return out


EXAMPLE = "--candidate artifacts/candidate/insurance-minilm-l6-ce --split valid --queries 500"


def main(argv=None, prog: str = "python -m jobs.compare_models") -> int:
    p = cli.command_parser(prog, __doc__, EXAMPLE)
    p.add_argument("--baseline", default="models/insurance-minilm-l6-ce", help="local model folder")
    p.add_argument("--candidate", required=True, help="local model folder")
    p.add_argument("--split", default="valid", choices=["valid", "test"], help="choose on valid")
    p.add_argument("--queries", type=int, default=None, help="N questions of the split (all)")
    p.add_argument(
        "--skip",
        type=int,
        default=0,
        help="start after the first M questions (those a calibration or checkpoint choice has seen)",
    )
    p.add_argument("--k-recall", type=int, default=20)
    p.add_argument("--precision", default="fp32", choices=["int8", "fp32"])
    p.add_argument("--embeddings-cache", default=".cache/embeddings")
    p.add_argument("--scores-cache", default=".cache/scores")
    args = p.parse_args(argv)
    return cli.run_main("compare", args, lambda: run(args))


def questions_of(split: list, skip: int, n: int | None) -> list:
    """Questions skip … skip + n - 1 of a split (to its end without n); an empty choice is an error."""
    chosen = split[skip : None if n is None else skip + n]
    if not chosen:
        raise ConfigError(f"--skip {skip} --queries {n}: no questions (the split has {len(split)})")
    return chosen


def run(args) -> int:
    from rerank_engine.data.insuranceqa import answer_recall, load_answers, load_split

    result = compare(
        args.baseline,
        args.candidate,
        questions_of(load_split(args.split), args.skip, args.queries),
        load_answers(),
        answer_recall(args.embeddings_cache),
        k_recall=args.k_recall,
        precision=args.precision,
        cache_dir=args.scores_cache,
    )
    print(json.dumps({"split": args.split, "skip": args.skip, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
