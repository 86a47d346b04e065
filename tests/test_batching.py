"""Length bucketing by padded-token budget: hand-worked plans and randomized invariants."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rerank_engine.serving.batching import (
    Batch,
    check_coverage,
    pad_rows,
    padding_efficiency,
    plan_batches,
    round_up,
)


def plan_as_lists(batches):
    return [(b.indices.tolist(), b.padded_length) for b in batches]


def test_round_up():
    assert [round_up(n, 8) for n in (1, 7, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]


def test_budget_cut_sorted_by_length():
    # lengths 10, 3, 20, 5 → padded 16, 8, 24, 8; visiting order (shortest first) is rows 1, 3, 0, 2.
    # row 1: 8×1 = 8;  + row 3: 8×2 = 16;  + row 0: 16×3 = 48 ≤ 50;  + row 2: 24×4 = 96 > 50 → cut.
    plan = plan_batches([10, 3, 20, 5], max_batch_tokens=50, max_batch_rows=100)
    assert plan_as_lists(plan) == [([1, 3, 0], 16), ([2], 24)]


def test_budget_cut_exactly_at_budget_is_kept():
    # four rows of padded 8: 8×4 = 32 ≤ 32 stays one batch; a fifth row (40 > 32) starts a new one.
    plan = plan_batches([8, 8, 8, 8, 8], max_batch_tokens=32, max_batch_rows=100)
    assert plan_as_lists(plan) == [([0, 1, 2, 3], 8), ([4], 8)]


def test_row_cap():
    plan = plan_batches([4] * 7, max_batch_tokens=10_000, max_batch_rows=3)
    assert plan_as_lists(plan) == [([0, 1, 2], 8), ([3, 4, 5], 8), ([6], 8)]


def test_row_longer_than_budget_sits_alone():
    # row 1 pads to 104 > budget 64: it gets a batch of its own; rows 0 and 2 (padded 8) share one.
    plan = plan_batches([5, 100, 6], max_batch_tokens=64, max_batch_rows=100)
    assert plan_as_lists(plan) == [([0, 2], 8), ([1], 104)]
    # the same without bucketing: the long row sits between the short ones, still alone.
    plan = plan_batches([5, 100, 6], max_batch_tokens=64, max_batch_rows=100, bucketing=False)
    assert plan_as_lists(plan) == [([0], 8), ([1], 104), ([2], 8)]


def test_pad_to_multiple():
    plan = plan_batches([9, 17], max_batch_tokens=1000, max_batch_rows=10)
    assert plan_as_lists(plan) == [([0, 1], 24)]
    plan = plan_batches([9, 17], max_batch_tokens=1000, max_batch_rows=10, pad_multiple=1)
    assert plan_as_lists(plan) == [([0, 1], 17)]
    plan = plan_batches([9, 17], max_batch_tokens=1000, max_batch_rows=10, pad_multiple=32)
    assert plan_as_lists(plan) == [([0, 1], 32)]


def test_no_bucketing_keeps_input_order():
    # input order 30, 2, 2, 30: padded 32, 8, 8, 32. 32×1, 32×2 = 64 ≤ 64, 32×3 = 96 > 64 → cut.
    plan = plan_batches([30, 2, 2, 30], max_batch_tokens=64, max_batch_rows=100, bucketing=False)
    assert plan_as_lists(plan) == [([0, 1], 32), ([2, 3], 32)]
    # bucketing groups the two short and the two long rows instead: 8×2, then 32×2.
    plan = plan_batches([30, 2, 2, 30], max_batch_tokens=64, max_batch_rows=100)
    assert plan_as_lists(plan) == [([1, 2], 8), ([0, 3], 32)]


def test_empty_and_bad_lengths():
    assert plan_batches([], max_batch_tokens=64, max_batch_rows=4) == []
    with pytest.raises(ValueError, match="≥ 1"):
        plan_batches([3, 0, 2], max_batch_tokens=64, max_batch_rows=4)
    with pytest.raises(ValueError, match="one-dimensional"):
        plan_batches([[1, 2]], max_batch_tokens=64, max_batch_rows=4)


def test_plan_invariants_over_random_inputs():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(0, 80))
        lengths = rng.integers(1, rng.choice([16, 300, 1200]), size=n)
        budget = int(rng.integers(8, 4096))
        max_rows = int(rng.integers(1, 40))
        pad_multiple = int(rng.choice([1, 8, 16]))
        bucketing = bool(rng.integers(0, 2))
        plan = plan_batches(
            lengths,
            max_batch_tokens=budget,
            max_batch_rows=max_rows,
            pad_multiple=pad_multiple,
            bucketing=bucketing,
        )
        where = f"seed {seed}"
        seen = np.concatenate([b.indices for b in plan]) if plan else np.array([], dtype=np.int64)
        assert sorted(seen.tolist()) == list(range(n)), where  # every row exactly once
        check_coverage(plan, n)
        if not bucketing:
            assert seen.tolist() == list(range(n)), where
        for b in plan:
            rows = len(b.indices)
            assert 1 <= rows <= max_rows, where
            assert b.padded_length % pad_multiple == 0, where
            assert b.padded_length >= int(lengths[b.indices].max()), where
            assert b.padded_length == round_up(int(lengths[b.indices].max()), pad_multiple), where
            if rows > 1:
                assert b.padded_length * rows <= budget, where
        if plan:
            eff = padding_efficiency(lengths, plan)
            assert 0.0 < eff <= 1.0, where


def test_padding_efficiency_hand_computed():
    # lengths 3, 5, 8, 20 with budget 32: padded 8, 8, 8, 24.
    # 8×1, 8×2, 8×3 = 24 ≤ 32, then 24×4 = 96 > 32 → batches [0,1,2]@8 and [3]@24.
    lengths = [3, 5, 8, 20]
    plan = plan_batches(lengths, max_batch_tokens=32, max_batch_rows=10)
    assert plan_as_lists(plan) == [([0, 1, 2], 8), ([3], 24)]
    # real tokens 3+5+8+20 = 36; padded tokens 8×3 + 24×1 = 48; 36/48 = 0.75
    assert padding_efficiency(lengths, plan) == pytest.approx(0.75)
    # one batch padded to the longest: 24×4 = 96 → 36/96 = 0.375
    naive = plan_batches(lengths, max_batch_tokens=10_000, max_batch_rows=10, bucketing=False)
    assert padding_efficiency(lengths, naive) == pytest.approx(0.375)
    assert padding_efficiency([], []) == 1.0


def test_check_coverage_catches_broken_plans():
    good = [Batch(np.array([0, 2]), 8), Batch(np.array([1]), 8)]
    check_coverage(good, 3)
    with pytest.raises(RuntimeError, match=r"missing \[1\]"):
        check_coverage([Batch(np.array([0, 2]), 8)], 3)
    with pytest.raises(RuntimeError, match=r"repeated \[2\]"):
        check_coverage([Batch(np.array([0, 2]), 8), Batch(np.array([1, 2]), 8)], 3)
    check_coverage([], 0)


def test_pad_rows():
    ids, mask = pad_rows([np.array([5, 6, 7]), np.array([9])], 4, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 0], [9, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


def test_cheapest_cuts_hand_worked():
    # lengths 8, 8, 8, 64 (pad 1), cost 10 per batch, budget large.
    # one batch: 64×4 + 10 = 266; [8,8,8] + [64]: 24 + 10 + 64 + 10 = 108 → the long row goes alone.
    plan = plan_batches(
        [8, 64, 8, 8], max_batch_tokens=10_000, max_batch_rows=10, pad_multiple=1, batch_cost_tokens=10
    )
    assert plan_as_lists(plan) == [([0, 2, 3], 8), ([1], 64)]
    # a batch costs more than the padding it saves: everything in one batch (8, 9, 10 → 30 + 100 = 130
    # vs 8 + 9·... any cut adds 100)
    plan = plan_batches(
        [10, 8, 9], max_batch_tokens=10_000, max_batch_rows=10, pad_multiple=1, batch_cost_tokens=100
    )
    assert plan_as_lists(plan) == [([1, 2, 0], 10)]


def _brute_force_cost(padded, max_tokens, max_rows, cost):
    """Cheapest partition of the sorted lengths into contiguous batches, by trying every cut set."""
    n, best = len(padded), np.inf
    for mask in range(2 ** (n - 1)):
        cuts = [0, *[i + 1 for i in range(n - 1) if mask >> i & 1], n]
        total = 0
        for a, b in itertools.pairwise(cuts):
            size = padded[b - 1] * (b - a)
            if (b - a) > max_rows or (size > max_tokens and b - a > 1):
                total = np.inf
                break
            total += size + cost
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_cheapest_cuts_are_optimal_and_within_limits(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 200, size=int(rng.integers(1, 11)))
    max_tokens, max_rows, cost = (
        int(rng.integers(100, 800)),
        int(rng.integers(1, 6)),
        int(rng.integers(0, 300)),
    )
    plan = plan_batches(
        lengths, max_batch_tokens=max_tokens, max_batch_rows=max_rows, pad_multiple=8, batch_cost_tokens=cost
    )
    check_coverage(plan, len(lengths))
    for b in plan:
        assert len(b.indices) <= max_rows and (b.padded_tokens <= max_tokens or len(b.indices) == 1)
        assert b.padded_length == round_up(int(lengths[b.indices].max()), 8)
    padded = np.sort(-(-lengths // 8) * 8)
    assert sum(b.padded_tokens + cost for b in plan) == _brute_force_cost(padded, max_tokens, max_rows, cost)
    greedy = plan_batches(lengths, max_batch_tokens=max_tokens, max_batch_rows=max_rows, pad_multiple=8)
    assert sum(b.padded_tokens + cost for b in plan) <= sum(b.padded_tokens + cost for b in greedy)
