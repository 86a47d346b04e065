"""Audit InsuranceQA's labels: how much of the cascade's measured error is unlabelled paraphrase answers?

    python -m jobs.audit_labels --split test --queries 1000 --out reports/insuranceqa_label_audit
    # judge <out>/blind_items.md (without opening blind_key.json), save the verdicts, then:
    python -m jobs.audit_labels --split test --queries 1000 --out reports/insuranceqa_label_audit \
        --judgements reports/insuranceqa_label_audit/judgements.json

Scores nothing new: the cascade's scores come from the cache `jobs.evaluate` wrote (scored otherwise).
Writes <out>/results.json and <out>/report.md with, for recall, the reranker alone, the fused score and a
perfect rerank of the recall top-20:
- strict metrics (InsuranceQA's labels) beside lenient ones, where an answer labelled for another question
  within a cosine threshold of this one (bi-encoder embeddings) also counts as relevant;
- among top-1 answers that are not labelled, the share that are such paraphrase answers;
- a blind sample of questions whose recall top-1 and fused top-1 differ (<out>/blind_items.md, the two
  answers as A and B in random order, and blind_key.json), and with --judgements the relevance judged by
  a person, counted per system.
judgements.json: a list, one {"A": true|false, "B": true|false} per item, in the items' order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from rerank_engine import cli
from rerank_engine.errors import ModelNotFoundError
from rerank_engine.quality import evaluation
from rerank_engine.quality.label_audit import blind_items, items_markdown, paired, paraphrase_positives, tally
from rerank_engine.quality.metrics import mean_metrics
from rerank_engine.quality.score_policy import FUSION_FILE, calibrated_max_length, read_fusion

THRESHOLDS = (0.95, 0.9, 0.85)
CRITERION = (
    "Judged relevant: the answer addresses the question asked, so that someone asking it would accept it."
    " An answer to a neighbouring question (another Medicare part; the premium when the question asks how"
    " much cover) or one that states a wrong rule is judged not relevant."
)
RECALL, FUSED = "bi-encoder (recall top-20)", "fused rerank"


def main(argv=None, prog: str = "python -m jobs.audit_labels") -> int:
    p = cli.command_parser(prog, __doc__, "--split test --queries 1000 --out reports/insuranceqa_label_audit")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--model", default="models/insurance-minilm-l6-ce")
    p.add_argument("--queries", type=int, default=1000, help="first N questions")
    p.add_argument("--sample", type=int, default=100, help="questions in the blind sample")
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.add_argument("--scores-cache", default=".cache/scores")
    p.add_argument("--judgements", default=None, help="verdicts on blind_items.md (JSON list)")
    p.add_argument("--out", default="reports/insuranceqa_label_audit")
    args = p.parse_args(argv)
    return cli.run_main("label audit", args, lambda: run(args))


def run(args) -> int:
    started = time.perf_counter()

    from rerank_engine.data.insuranceqa import SPLITS, answer_recall, load_answers, load_split
    from rerank_engine.recall.index import embed_cached

    questions = load_split(args.split)[: args.queries]
    answers = load_answers()
    recall = answer_recall(args.cache_dir)
    candidates, cosines = evaluation.recall_top_k(questions, recall)
    max_length = calibrated_max_length(args.model) or 256
    model_id, _, sc = evaluation.score_cascade(
        args.model, questions, candidates, answers, args.scores_cache, precision="fp32", max_length=max_length
    )
    fusion = read_fusion(args.model, model_id)
    if fusion is None:
        raise ModelNotFoundError(f"{Path(args.model) / FUSION_FILE} not found (write it with jobs.calibrate)")
    fused = evaluation.fused_cascade(sc, fusion, cosines)
    orders = {
        RECALL: candidates,
        "reranker alone": [ids for ids, _ in sc.reranked(len(candidates[0]))],
        FUSED: [ids for ids, _ in fused.reranked(len(candidates[0]))],
    }

    pool = [q for split in SPLITS for q in load_split(split)]
    pool_emb = np.concatenate(
        [embed_cached(recall[0], [q.text for q in load_split(s)], args.cache_dir) for s in SPLITS]
    )
    qids = {q.qid: i for i, q in enumerate(pool)}
    query_emb = pool_emb[[qids[q.qid] for q in questions]]
    strict = [set(q.answers) for q in questions]
    labels = {"strict": strict}
    for t in THRESHOLDS:
        extra = paraphrase_positives(
            [q.qid for q in questions],
            query_emb,
            [q.qid for q in pool],
            pool_emb,
            [set(q.answers) for q in pool],
            t,
        )
        labels[f"cos ≥ {t}"] = [s | e for s, e in zip(strict, extra, strict=True)]

    results = {"_meta": {"split": args.split, "questions": len(questions), "model": model_id}}
    results["metrics"] = _metrics(orders, candidates, labels)
    results["top1_unlabelled"] = _top1_unlabelled(orders, strict, labels["cos ≥ 0.9"])
    results["paraphrase_positives_per_question"] = {
        name: round(float(np.mean([len(r - s) for r, s in zip(rel, strict, strict=True)])), 3)
        for name, rel in labels.items()
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    differ = [i for i, q in enumerate(questions) if orders[RECALL][i][0] != orders[FUSED][i][0]]
    # a prefix of one fixed permutation: a larger --sample keeps the items already judged, in order
    picked = [int(i) for i in np.random.default_rng(0).permutation(differ)[: args.sample]]
    items, key = blind_items(
        [(questions[i].text, answers[orders[RECALL][i][0]], answers[orders[FUSED][i][0]]) for i in picked],
        (RECALL, FUSED),
    )
    (out / "blind_items.md").write_text(
        items_markdown(items, "Blind sample: is each answer a relevant answer to the question?")
    )
    (out / "blind_key.json").write_text(json.dumps(key, indent=1) + "\n")
    results["blind"] = {"questions_top1_differs": len(differ), "sample": [questions[i].qid for i in picked]}
    if args.judgements:
        judged = json.loads(Path(args.judgements).read_text())
        results["blind"]["judged"] = tally(judged, key)
        results["blind"]["paired"] = paired(judged, key, (RECALL, FUSED))
        results["blind"]["labelled_relevant"] = tally(
            [
                {k: a[k] in strict[i] for k in "AB"}
                for a, i in zip(_shown_ids(key, picked, orders), picked, strict=True)
            ],
            key,
        )
    results["_meta"]["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(_report(results, args))
    print((out / "report.md").read_text())
    return 0


def _metrics(orders, candidates, labels) -> dict:
    out = {}
    for label_name, rel in labels.items():
        rows = dict(orders)
        rows["perfect rerank of recall top-20"] = [
            sorted(c, key=lambda d, r=r: d not in r) for c, r in zip(candidates, rel, strict=True)
        ]
        out[label_name] = {
            name: {k: round(v, 4) for k, v in mean_metrics(list(zip(o, rel, strict=True)), (1, 5)).items()}
            for name, o in rows.items()
        }
    return out


def _top1_unlabelled(orders, strict, lenient) -> dict:
    out = {}
    for name, o in orders.items():
        wrong = [i for i, ids in enumerate(o) if ids[0] not in strict[i]]
        para = sum(o[i][0] in lenient[i] for i in wrong)
        out[name] = {"top1_unlabelled": len(wrong), "of_which_paraphrase_answer": para}
    return out


def _shown_ids(key, picked, orders) -> list[dict[str, str]]:
    """Which answer id each letter showed, rebuilt from the key."""
    return [
        {letter: orders[system][i][0] for letter, system in k.items()}
        for k, i in zip(key, picked, strict=True)
    ]


def _report(results, args) -> str:
    meta = results["_meta"]
    cmd = f"python -m jobs.audit_labels --split {args.split} --queries {args.queries} --out {args.out}"
    lines = [
        f"# Label audit: {meta['model']} on InsuranceQA {args.split} ({meta['questions']} questions)",
        "",
        f"`{cmd}`"
        + (f" `--judgements {args.judgements}`" if args.judgements else "")
        + f" ({meta['seconds']} s).",
        "",
        "## Strict and lenient labels",
        "",
        "Lenient: an answer labelled for another InsuranceQA question (any split) whose bi-encoder cosine",
        "to this question is at least the threshold also counts as relevant. Mean extra positives per"
        " question: "
        + ", ".join(
            f"{k} {v}" for k, v in results["paraphrase_positives_per_question"].items() if k != "strict"
        )
        + ".",
        "",
        "| labels | system | P@1 | NDCG@5 | ΔNDCG@5 vs recall |",
        "|---|---|---|---|---|",
    ]
    for label_name, rows in results["metrics"].items():
        base = rows[RECALL]["NDCG@5"]
        for name, m in rows.items():
            lines.append(
                f"| {label_name} | {name} | {m['P@1']:.3f} | {m['NDCG@5']:.3f} | {m['NDCG@5'] - base:+.3f} |"
            )
    lines += [
        "",
        "## Top-1 answers that are not labelled relevant",
        "",
        "| system | unlabelled top-1 | of which an answer to a paraphrase (cos ≥ 0.9) |",
        "|---|---|---|",
    ]
    for name, c in results["top1_unlabelled"].items():
        lines.append(f"| {name} | {c['top1_unlabelled']} | {c['of_which_paraphrase_answer']} |")
    blind = results["blind"]
    lines += [
        "",
        "## Blind judgement",
        "",
        f"{blind['questions_top1_differs']} questions have a different top-1 under recall and under the",
        f"fused rerank; {len(blind['sample'])} of them were drawn (seed 0) into `blind_items.md`, the two",
        "top-1 answers shown as A and B in random order, the systems' names kept in `blind_key.json`.",
        "",
    ]
    if "judged" in blind:
        lines += [CRITERION, "", "| system | judged relevant | labelled relevant |", "|---|---|---|"]
        for name in (RECALL, FUSED):
            j, lab = blind["judged"][name], blind["labelled_relevant"][name]
            lines.append(f"| {name} | {j['relevant']}/{j['judged']} | {lab['relevant']}/{lab['judged']} |")
        pair = blind["paired"]
        lines += [
            "",
            "Paired: " + ", ".join(f"{k} {v}" for k, v in pair.items()) + " (sign test over the"
            " questions where exactly one top-1 was judged relevant).",
        ]
    else:
        lines.append("Not judged yet (run again with --judgements).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
