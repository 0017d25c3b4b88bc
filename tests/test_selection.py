"""hsr_plugin.selection: candidate masks (the set difference), restoration inside slices, N:M
filters and restore gains, tested without any model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hsr_plugin.selection import (
    benign_penalized_gains,
    candidate_mask,
    nm_compatible_mask,
    pruned_mask,
    restore_gains,
    tensor_restore_mask,
    tensor_with_restored,
    top_fraction_count,
    top_fraction_mask,
)
from tests.helpers import raises_exactly

fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _tensor(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@given(shapes, fractions, st.integers(0, 10_000))
def test_top_fraction_mask_keeps_exactly_k_of_the_largest(shape, fraction, seed):
    scores = _tensor(shape, seed)
    mask = top_fraction_mask(scores, fraction)
    k = top_fraction_count(scores.numel(), fraction)
    assert int(mask.sum()) == k
    if 0 < k < scores.numel():
        assert scores[mask].min() >= scores[~mask].max()
    assert torch.equal(mask, top_fraction_mask(scores.clone(), fraction))


def test_top_fraction_ties_break_by_index():
    mask = top_fraction_mask(torch.zeros(2, 3), 0.5)
    assert mask.flatten().tolist() == [True, True, True, False, False, False]


def test_top_fraction_rejects_nan_and_bad_fractions():
    with pytest.raises(ValueError, match="NaN or inf"):
        top_fraction_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        top_fraction_mask(torch.ones(3), 1.5)


@given(
    shapes, st.integers(0, 10_000), st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0)
)
def test_candidate_rule_is_the_set_difference(shape, seed, q, p, p_extra):
    p_max = min(1.0, p + p_extra)
    safety, utility = _tensor(shape, seed), _tensor(shape, seed + 1)
    cand = candidate_mask(safety, utility, q, p, p_max)
    expected = (
        top_fraction_mask(safety, q)
        & top_fraction_mask(utility, p_max)
        & ~top_fraction_mask(utility, p)
    )
    assert torch.equal(cand, expected)
    assert not (cand & top_fraction_mask(utility, p)).any()


def test_candidate_rule_validates():
    with pytest.raises(ValueError, match="p_max"):
        candidate_mask(torch.ones(2, 2), torch.ones(2, 2), 0.5, 0.8, 0.7)
    with pytest.raises(ValueError, match="same shape"):
        candidate_mask(torch.ones(2, 2), torch.ones(2, 3), 0.5, 0.5, 0.7)


@given(shapes, st.integers(0, 10_000))
def test_restore_touches_only_pruned_candidates_in_slices(shape, seed):
    dense = _tensor(shape, seed)
    keep = _tensor(shape, seed + 1) > 0
    pruned_weight = torch.where(keep, dense, torch.zeros_like(dense))
    cand = _tensor(shape, seed + 2) > 0
    slices = _tensor(shape, seed + 3) > 0
    pruned = pruned_mask(pruned_weight, dense)
    mask = tensor_restore_mask(cand, slices, pruned)
    final = tensor_with_restored(pruned_weight, dense, mask)
    assert torch.equal(final[mask], dense[mask])
    assert torch.equal(final[~mask], pruned_weight[~mask])
    assert not (mask & ~pruned).any() and not (mask & ~slices).any() and not (mask & ~cand).any()


def test_pruned_mask_ignores_weights_that_were_zero_in_the_dense_model():
    dense = torch.tensor([[0.0, 1.0, 2.0]])
    pruned = torch.tensor([[0.0, 0.0, 2.0]])
    assert pruned_mask(pruned, dense).tolist() == [[False, True, False]]
    with pytest.raises(ValueError, match="differ in shape"):
        pruned_mask(pruned, torch.ones(2, 3))


@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 10_000))
def test_nm_filter_never_exceeds_n_per_group(rows, groups, seed):
    n, m = 2, 4
    dense = _tensor((rows, groups * m), seed)
    weight = dense.clone()
    for r in range(rows):  # exactly 2:4 pruned except one group with room
        for g in range(groups):
            drop = torch.randperm(m, generator=torch.Generator().manual_seed(seed + r * 7 + g))[
                : m - n + (1 if g == 0 else 0)
            ]
            weight[r, g * m + drop] = 0
    restore = pruned_mask(weight, dense)
    keep = nm_compatible_mask(restore, weight, n, m, priority=dense.abs())
    final = tensor_with_restored(weight, dense, keep)
    assert ((final != 0).reshape(rows, groups, m).sum(-1) <= n).all()
    assert int(keep.sum()) == rows  # exactly the one group with room per row
    assert not (keep & ~restore).any()


def test_candidate_fractions_are_bounded():
    s = torch.rand(3, 4)
    for q, p, pmax in [(0.0, 0.1, 0.5), (1.5, 0.1, 0.5), (0.5, 0.1, 1.5), (0.5, -0.1, 0.5)]:
        with pytest.raises(ValueError):
            candidate_mask(s, s, q, p, pmax)
    assert candidate_mask(s, s, 1.0, 0.0, 1.0).all()


def test_nm_pattern_bounds_and_priority():
    pruned = torch.zeros(1, 4)
    restore = torch.tensor([[True, True, False, False]])
    assert nm_compatible_mask(restore, pruned, 1, 4).tolist() == [[True, False, False, False]]
    prefer_second = torch.tensor([[0.0, 9.0, 0.0, 0.0]])
    kept = nm_compatible_mask(restore, pruned, 1, 4, priority=prefer_second)
    assert kept.tolist() == [[False, True, False, False]], "priority decides within a group"
    assert nm_compatible_mask(restore, pruned, 4, 4).tolist() == restore.tolist()
    with pytest.raises(ValueError):
        nm_compatible_mask(restore, pruned, 0, 4)


def test_selection_errors_say_what_is_wrong():
    s = torch.rand(2, 4)
    raises_exactly(
        "safety_top (q) must lie in (0, 1], got 1.5", candidate_mask, s, s, 1.5, 0.1, 0.5
    )
    raises_exactly(
        "need 0 <= utility_top (p) <= utility_max (p_max) <= 1, got p=0.1, p_max=1.5",
        candidate_mask,
        s,
        s,
        0.5,
        0.1,
        1.5,
    )
    raises_exactly(
        "safety scores (2, 4) and utility scores (4, 2) must have the same shape",
        candidate_mask,
        s,
        s.T,
        0.5,
        0.1,
        0.5,
    )
    raises_exactly("fraction must lie in [0, 1], got 1.5", top_fraction_count, 4, 1.5)
    raises_exactly(
        "importance scores contain NaN or inf: check the calibration statistics",
        top_fraction_mask,
        torch.tensor([float("inf")]),
        0.5,
    )
    raises_exactly("N:M pattern needs 0 < N <= M, got 0:4", nm_compatible_mask, s > 0, s, 0, 4)
    raises_exactly("in_features 4 is not a multiple of M=3", nm_compatible_mask, s > 0, s, 1, 3)
    raises_exactly("restore mask and weight differ in shape", nm_compatible_mask, s.T > 0, s, 2, 4)
    raises_exactly(
        "pruned weight (2, 4) and dense weight (4, 2) differ in shape", pruned_mask, s, s.T
    )
    raises_exactly(
        "mask shapes differ: candidates (2, 4), slices (2, 4), pruned (4, 2)",
        tensor_restore_mask,
        s > 0,
        s > 0,
        s.T > 0,
    )
    raises_exactly(
        "shapes differ: pruned (2, 4), dense (2, 4), mask (4, 2)",
        tensor_with_restored,
        s,
        s,
        s.T > 0,
    )


def test_restore_gains_are_first_order_loss_changes():
    dense = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    g_s = torch.tensor([[-1.0, -1.0], [4.0, 0.0]])
    g_u = torch.tensor([[0.5, 0.0], [-1.0, 1.0]])
    gain, harm = restore_gains(dense, g_s, g_u)
    # restoring w: L_s moves by g_s * w; gain is the drop
    assert gain.tolist() == [[2.0, -1.0], [-2.0, 0.0]]
    assert harm.tolist() == [[1.0, 0.0], [-0.5, 3.0]]
    with pytest.raises(ValueError, match="shapes differ"):
        restore_gains(dense, g_s[:1], g_u)


def test_benign_penalized_gains_subtract_the_weighted_gain_on_benign_refusals():
    dense = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    gain = torch.tensor([[2.0, 1.0], [-2.0, 0.5]], dtype=torch.float64)
    g_b = torch.tensor([[-1.0, 0.0], [2.0, -0.5]])
    # benign refusal gain -g_b * w = [[2, 0], [-1, 1.5]]; a weight raising refusals of benign
    # look-alikes as much as of harmful requests nets zero
    assert benign_penalized_gains(gain, dense, g_b, 1.0).tolist() == [[0.0, 1.0], [-1.0, -1.0]]
    assert benign_penalized_gains(gain, dense, g_b, 0.5).tolist() == [[1.0, 1.0], [-1.5, -0.25]]
    assert torch.equal(benign_penalized_gains(gain, dense, g_b, 0.0), gain)
    with pytest.raises(ValueError, match="shapes differ"):
        benign_penalized_gains(gain, dense, g_b[:1], 1.0)
