"""Calibrate the reranker's absolute threshold on InsuranceQA valid and write it beside the model.

    python -m jobs.calibrate --model models/insurance-minilm-l6-ce --split valid --queries 500 \
        [--target-precision 0.5] [--plots reports/calibration/insurance-minilm-l6-ce] [--force]

Runs the cascade as the job does (bi-encoder recall top-20 over all 27,413 answers → cross-encoder,
fp32 ONNX on CPU → top-5), sweeps thresholds over the scored top-5 (`rerank_engine.quality.thresholds`), and
writes `<model>/threshold.json`: the best-F1 threshold on the probability scale, bound to the model id, with
the settings and figures it was chosen by. It also fits the score fusion of the reranker's logit with the
recall cosine on the same questions (`rerank_engine.quality.fusion`) and writes `<model>/fusion.json` with the
fused score's own best-F1 threshold. The batch job uses the fused score and its threshold by default, the
plain one where it cannot fuse (logged candidates, another bi-encoder, `fusion: off`). Plots:
`threshold_curves.png` (precision / recall / F1 / share no_relevant against the threshold) and
`score_histograms.png` (scores of relevant vs irrelevant pairs), and `threshold_tradeoff.md` (for the
served score: the threshold that hands nothing to 0 %, 10 %, … of the questions, its noise beside recall's).

The test split is never used here (report on it with `python -m jobs.evaluate --split test`). A rerun
with the same model and settings finds `threshold.json` up to date and returns at once; the pairs' scores
are cached under `--cache-dir`, so a rerun with other settings (`--target-precision`) scores nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from rerank_engine import cli
from rerank_engine.quality.calibration import calibrate
from rerank_engine.quality.score_policy import THRESHOLD_FILE

EXAMPLE = "--model models/insurance-minilm-l6-ce --split valid --queries 500 --max-length 128"


def main(argv=None, prog: str = "python -m jobs.calibrate") -> int:
    p = cli.command_parser(prog, __doc__, EXAMPLE)
    p.add_argument("--model", default="models/insurance-minilm-l6-ce", help="local model folder")
    p.add_argument("--split", default="valid", choices=["valid"], help="never test")
    p.add_argument("--queries", type=int, default=None, help="first N questions of the split (all)")
    p.add_argument("--k-recall", type=int, default=20)
    p.add_argument("--k-rerank", type=int, default=5)
    p.add_argument("--target-precision", type=float, default=None)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["int8", "fp32"],
        help="engine variant scored (the job's CPU default: fp32)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens per pair scored; the job then serves at this length (the shipped model: 128)",
    )
    p.add_argument(
        "--long-passages",
        default="truncate",
        choices=["truncate", "chunk_max"],
        help="how passages longer than the window are scored (tokenizer.long_passages; recorded)",
    )
    p.add_argument("--stride", type=int, default=None, help="chunk_max: tokens between window starts")
    p.add_argument("--plots", default=None, help="plot folder (reports/calibration/<model folder name>)")
    p.add_argument("--embeddings-cache", default=".cache/embeddings")
    p.add_argument("--cache-dir", default=".cache/scores")
    p.add_argument(
        "--force", action="store_true", help=f"recalibrate even when {THRESHOLD_FILE} is up to date"
    )
    args = p.parse_args(argv)
    return cli.run_main("calibrate", args, lambda: run(args))


def run(args) -> int:
    from rerank_engine.data.insuranceqa import DATA_VERSION, answer_recall, load_answers, load_split
    from rerank_engine.recall.index import BiEncoder

    questions = load_split(args.split)[: args.queries]
    result = calibrate(
        args.model,
        questions,
        load_answers(),
        lambda: answer_recall(args.embeddings_cache),
        recall_model=BiEncoder.describe(None),
        split=args.split,
        data=DATA_VERSION,
        k_recall=args.k_recall,
        k_rerank=args.k_rerank,
        target_precision=args.target_precision,
        precision=args.precision,
        max_length=args.max_length,
        long_passages=args.long_passages,
        stride=args.stride,
        plots_dir=args.plots or Path("reports/calibration") / Path(args.model).name,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
