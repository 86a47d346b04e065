"""Training-step speed on this machine: the fine-tuning loop's options side by side, interleaved.

    python -m benchmarks.train_speed --records artifacts/recipe_comparison/mined_clean.jsonl \
        [--steps 8] [--rounds 3] [--json reports/training/train_speed.json]

Each variant trains its own copy of the bundled all-MiniLM-L6-v2 on the same groups (8 × (1 + 3), max
length 128, as the recipe does); rounds alternate the variants so drift hits all of them. Reported:
median seconds a step and pairs/s after the first round (the memo warm, as from a run's second
epoch on), with the ratio to the first variant, and the first round's median apart. Variants:
- before: the loop as it was (every pair tokenized at every step, AdamW's default foreach update);
- memo: each distinct text tokenized once (the memoized PairTokenizer the loop now uses);
- memo + fused AdamW: also the single-kernel AdamW update (`fused=True`);
- memo + bf16: the memo and the step's forward under bf16 autocast (`train.precision: bf16`); faster only
  where the CPU has bf16 units (avx512_bf16, AMX), which `cpu_bf16` in the JSON reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

VARIANTS = {  # name: (memoized tokenizer, fused AdamW, bf16 autocast)
    "before": (False, False, False),
    "memo": (True, False, False),
    "memo + fused AdamW": (True, True, False),
    "memo + bf16": (True, False, True),
}


def cpu_bf16() -> list[str]:
    """The CPU's bf16 flags (Linux /proc/cpuinfo): avx512_bf16, amx_bf16; empty where it has none."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    p.add_argument("--records", required=True, help="mined JSONL (jobs.mine_hard_negatives)")
    p.add_argument("--steps", type=int, default=8, help="steps a variant runs in each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from rerank_engine.config import TokenizerConfig
    from rerank_engine.recall.index import bundled_minilm_dir
    from rerank_engine.serving.tokenization import PairTokenizer
    from rerank_engine.training.finetune import group_loss
    from rerank_engine.training.groups import GroupSampler
    from rerank_engine.training.hard_negatives import read_records
    from rerank_engine.training.loop import bucketed_logits
    from rerank_engine.training.scoring import load_model

    torch.set_num_threads(args.threads)
    base = bundled_minilm_dir()
    records = read_records(args.records)
    groups_per_step, n_neg, n_rand = 8, 2, 1
    state = {}
    for name, (memo, fused, bf16) in VARIANTS.items():
        model = load_model(base, seed=0).train()
        state[name] = {
            "model": model,
            "optimizer": torch.optim.AdamW(model.parameters(), lr=2e-5, fused=fused),
            "tokenizer": PairTokenizer(base, TokenizerConfig(max_length=128), memoize=memo),
            "sampler": GroupSampler(records, n_neg, seed=0, n_random=n_rand),
            "bf16": bf16,
            "times": [],
        }
    for _ in range(args.rounds):
        for s in state.values():
            s["sampler"].load_state({"epoch": 0, "cursor": 0})  # every variant sees the same groups
            for _ in range(args.steps):
                groups = s["sampler"].next_groups(groups_per_step)
                started = time.perf_counter()
                queries = [g.query for g in groups for _ in g.passages]
                passages = [x for g in groups for x in g.passages]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s["bf16"]):
                    logits = bucketed_logits(s["model"], s["tokenizer"], queries, passages, "cpu")
                    loss = group_loss("listwise", logits.view(len(groups), 1 + n_neg + n_rand))
                s["optimizer"].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(s["model"].parameters(), 1.0)
                s["optimizer"].step()
                s["times"].append(time.perf_counter() - started)
    pairs = groups_per_step * (1 + n_neg + n_rand)
    first = None
    rows = {}
    for name, s in state.items():
        cold = statistics.median(s["times"][: args.steps])  # round 1: the memo is still empty
        t = statistics.median(s["times"][args.steps :] or s["times"])  # warm: from the second epoch on
        first = first or t
        rows[name] = {
            "seconds_a_step": round(t, 3),
            "pairs_per_s": round(pairs / t, 1),
            "x_before": round(first / t, 3),
            "cold_seconds_a_step": round(cold, 3),
        }
        print(
            f"{name:>20}: {t:.3f} s a step, {pairs / t:.1f} pairs/s, {first / t:.3f}x before "
            f"(first round {cold:.3f} s)"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {"args": vars(args), "cpu_bf16": cpu_bf16(), "torch": torch.__version__, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
