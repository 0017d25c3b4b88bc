"""Pure selection, slicing, importance and head-score math, tested without any model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hsr_plugin.architecture import AttentionBlock
from hsr_plugin.head_scores import (
    last_token_kl,
    principal_angle_score,
    rank_heads,
    reference_angle_score,
    select_top_heads,
)
from hsr_plugin.importance import (
    GradientSaliencyAccumulator,
    HessianAccumulator,
    InputNormAccumulator,
    sparsegpt_scores,
    wanda_scores,
)
from hsr_plugin.selection import (
    apply_restore,
    candidate_mask,
    nm_compatible_mask,
    pruned_mask,
    restore_mask,
    top_fraction_count,
    top_fraction_mask,
)
from hsr_plugin.slicing import head_slice_mask, union_head_slices
from tests.helpers import raises_exactly

fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _tensor(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- selection
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
    mask = restore_mask(cand, slices, pruned)
    final = apply_restore(pruned_weight, dense, mask)
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
    final = apply_restore(weight, dense, keep)
    assert ((final != 0).reshape(rows, groups, m).sum(-1) <= n).all()
    assert int(keep.sum()) == rows  # exactly the one group with room per row
    assert not (keep & ~restore).any()


# ----------------------------------------------------------------------------- slicing
@given(st.integers(1, 4), st.sampled_from([1, 2, 4]), st.integers(1, 5))
def test_exact_slices_partition_q_and_o_and_share_kv_within_a_group(kv_heads, group, head_dim):
    heads, hidden = kv_heads * group, 8
    q_union = torch.zeros(heads * head_dim, hidden, dtype=torch.int)
    o_union = torch.zeros(hidden, heads * head_dim, dtype=torch.int)
    for h in range(heads):
        q_union += head_slice_mask(
            (heads * head_dim, hidden), "q", h, h // group, head_dim, heads
        ).int()
        o_union += head_slice_mask(
            (hidden, heads * head_dim), "o", h, h // group, head_dim, heads
        ).int()
        k = head_slice_mask((kv_heads * head_dim, hidden), "k", h, h // group, head_dim, heads)
        assert k.sum() == head_dim * hidden
        first = head_slice_mask(
            (kv_heads * head_dim, hidden), "k", (h // group) * group, h // group, head_dim, heads
        )
        assert torch.equal(k, first), "heads of one KV group share K/V rows"
    assert (q_union == 1).all() and (o_union == 1).all()


def test_reference_slices_are_input_bands_and_whole_o_proj():
    q = head_slice_mask((8, 12), "q", 1, 0, 2, 4, mode="reference")
    assert q[:, 3:6].all() and q.sum() == 8 * 3
    assert head_slice_mask((12, 8), "o", 2, 1, 2, 4, mode="reference").all()
    union = union_head_slices((8, 12), "v", [(0, 0), (3, 1)], 2, 4, mode="reference")
    assert union[:, :3].all() and union[:, 9:].all() and not union[:, 3:9].any()


def test_slice_validation():
    with pytest.raises(ValueError, match="head 4 is outside"):
        head_slice_mask((8, 8), "q", 4, 0, 2, 4)
    with pytest.raises(ValueError, match="KV group 3 needs"):
        head_slice_mask((4, 8), "k", 0, 3, 2, 4)
    with pytest.raises(ValueError, match="projection"):
        head_slice_mask((4, 8), "x", 0, 0, 2, 4)


@pytest.mark.parametrize(
    ("group", "groups_of_heads"),
    [
        (1, [0, 1, 2, 3, 4, 5, 6, 7]),
        (2, [0, 0, 1, 1, 2, 2, 3, 3]),
        (4, [0, 0, 0, 0, 1, 1, 1, 1]),
        (8, [0, 0, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_kv_groups_and_exact_slices_for_every_group_size(group, groups_of_heads):
    """8 query heads of dim 4 sharing 8 / group KV heads: head h reads KV group h // group."""
    block = AttentionBlock(0, "model.layers.0.self_attn", torch.nn.Identity(), 8, 8 // group, 4)
    assert block.kv_group_size == group
    assert [block.kv_group(h) for h in range(8)] == groups_of_heads
    kv_rows = 4 * (8 // group)
    for head, g in enumerate(groups_of_heads):
        k = head_slice_mask((kv_rows, 32), "k", head, g, 4, 8)
        assert k.any(1).nonzero().flatten().tolist() == list(range(4 * g, 4 * g + 4))
        assert k.all(1)[4 * g : 4 * g + 4].all()
        q = head_slice_mask((32, 32), "q", head, g, 4, 8)
        assert q.any(1).nonzero().flatten().tolist() == list(range(4 * head, 4 * head + 4))
        o = head_slice_mask((32, 32), "o", head, g, 4, 8)
        assert o.any(0).nonzero().flatten().tolist() == list(range(4 * head, 4 * head + 4))


# ----------------------------------------------------------------------------- importance
def test_wanda_uses_response_tokens_only_and_one_vector_per_matrix():
    acc = InputNormAccumulator(3)
    x = torch.tensor([[[1.0, 2.0, 3.0], [100.0, 100.0, 100.0]]])
    acc.update(x, torch.tensor([[True, False]]))
    assert acc.count == 1 and acc.squared_norms().tolist() == [1.0, 4.0, 9.0]
    w = torch.tensor([[1.0, -1.0, 2.0]])
    assert torch.allclose(
        wanda_scores(w, acc.squared_norms()), torch.tensor([[1.0, 2.0, 6.0]], dtype=torch.float64)
    )


def test_empty_statistics_have_a_clear_error():
    with pytest.raises(ValueError, match="no response tokens"):
        InputNormAccumulator(3).squared_norms()
    with pytest.raises(ValueError, match="no response tokens"):
        HessianAccumulator(3).hessian()


def test_sparsegpt_scores_match_the_closed_form():
    torch.manual_seed(0)
    x = torch.randn(50, 4)
    acc = HessianAccumulator(4)
    acc.update(x)
    w = torch.randn(3, 4)
    h = 2 * x.double().T @ x.double() / 50
    h += 0.01 * h.diag().mean() * torch.eye(4, dtype=torch.float64)
    # the diagonal of U, the upper Cholesky factor of H^-1 = U^T U, written out by hand: with
    # H^-1 = P, U_ii = sqrt(P_ii - sum_{k<i} U_ki^2), so U_00 = sqrt(P_00) ...
    p = torch.linalg.inv(h)
    u = torch.zeros_like(p)
    for i in range(4):
        u[i, i] = torch.sqrt(p[i, i] - (u[:i, i] ** 2).sum())
        for j in range(i + 1, 4):
            u[i, j] = (p[i, j] - (u[:i, i] * u[:i, j]).sum()) / u[i, i]
    torch.testing.assert_close(u.T @ u, p)
    expected = w.double() ** 2 / u.diag() ** 2
    assert torch.allclose(sparsegpt_scores(w, acc.hessian()), expected, rtol=1e-5)
    assert not torch.allclose(expected, w.double() ** 2 / p.diag() ** 2, rtol=1e-3), (
        "the test must tell U_cc^2 from [H^-1]_cc^2"
    )


def test_sparsegpt_scores_rank_as_llm_compressors_sparsegpt_prunes():
    """On a single-block matrix, the lowest-scored half is exactly what SparseGPT zeroes at 50%
    (its mask is fixed from the dense weights before any OBS update)."""
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    torch.manual_seed(1)
    x = torch.randn(200, 32) * torch.linspace(0.2, 3.0, 32)
    acc = HessianAccumulator(32)
    acc.update(x)
    layer = torch.nn.Linear(32, 16, bias=False)
    scores = sparsegpt_scores(layer.weight, acc.hessian())
    hessian = acc.hessian().float().clone()
    _loss, pruned = sparsify_weight(layer, {layer: hessian}, 0.5, 0, 0, 128, 0.01, False)
    zeroed = pruned.reshape(16, 32) == 0
    # its threshold is the score at sorted index n/2, kept with `<=`: n/2 + 1 weights go
    assert int(zeroed.sum()) == 16 * 32 // 2 + 1
    lowest = torch.zeros(16 * 32, dtype=torch.bool)
    lowest[scores.flatten().argsort()[: int(zeroed.sum())]] = True
    assert torch.equal(zeroed, lowest.reshape(16, 32))


def test_sparsegpt_handles_dead_inputs():
    acc = HessianAccumulator(3)
    acc.update(torch.tensor([[1.0, 0.0, 2.0], [2.0, 0.0, 1.0]]))
    scores = sparsegpt_scores(torch.ones(2, 3), acc.hessian())
    assert torch.isfinite(scores).all()


def test_snip_accumulates_absolute_saliency():
    acc = GradientSaliencyAccumulator()
    acc.update(torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]]))
    acc.update(torch.tensor([[1.0, -2.0]]), torch.tensor([[-1.0, 0.0]]))
    assert acc.scores().tolist() == [[4.0, 2.0]]


# ----------------------------------------------------------------------------- head scores
def test_kl_is_kl_of_dense_against_ablated_on_a_hand_computed_case():
    """p = (0.7, 0.2, 0.1), q = (0.1, 0.3, 0.6): KL(p||q) = 1.101868, KL(q||p) = 1.002104."""
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).log()
    q = torch.tensor([[0.1, 0.3, 0.6]], dtype=torch.float64).log()
    want = 0.7 * math.log(7) + 0.2 * math.log(2 / 3) + 0.1 * math.log(1 / 6)
    assert float(last_token_kl(p, q)[0]) == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx(1.101868, abs=1e-6)
    assert float(last_token_kl(q, p)[0]) == pytest.approx(1.002104, abs=1e-6), "argument order"
    assert float(last_token_kl(p + 3.0, q - 1.0)[0]) == pytest.approx(want, rel=1e-9)


def _plane(alpha: float, beta: float) -> torch.Tensor:
    """Two rows, singular values 3 > 2: leading direction cos(a) e1 + sin(a) e3, next cos(b) e2 +
    sin(b) e4. Against alpha = beta = 0 the principal angles are exactly alpha and beta."""
    e = torch.eye(4, dtype=torch.float64)
    return torch.stack(
        [
            3.0 * (math.cos(alpha) * e[0] + math.sin(alpha) * e[2]),
            2.0 * (math.cos(beta) * e[1] + math.sin(beta) * e[3]),
        ]
    )


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.5), (0.5, 0.2), (0.0, 0.7)])
def test_principal_angles_are_summed_over_the_rank(alpha, beta):
    dense, ablated = _plane(0.0, 0.0), _plane(alpha, beta)
    assert principal_angle_score(dense, ablated, 1) == pytest.approx(alpha, abs=1e-9)
    assert principal_angle_score(dense, ablated, 2) == pytest.approx(alpha + beta, abs=1e-9), (
        "ships_subspace is the SUM of the principal angles of the rank-r subspaces"
    )
    assert principal_angle_score(ablated, 5.0 * ablated, 2) == pytest.approx(0.0, abs=1e-7)


def test_principal_angle_of_orthogonal_directions():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    assert principal_angle_score(a, b, 1) == pytest.approx(math.pi / 2)
    with pytest.raises(ValueError, match="subspace_rank 3"):
        principal_angle_score(a, b, 3)


def test_reference_angle_uses_feature_zero_in_degrees():
    a = torch.tensor([[1.0, 5.0], [0.0, 5.0]])
    b = torch.tensor([[0.0, -5.0], [1.0, 9.0]])
    assert reference_angle_score(a, b) == pytest.approx(90.0)
    assert reference_angle_score(torch.zeros(2, 2), b) == 0.0


def test_ranking_is_deterministic_and_validated():
    ranked = rank_heads({(1, 0): 0.5, (0, 1): 0.5, (0, 0): 0.9})
    assert [k for k, _ in ranked] == [(0, 0), (0, 1), (1, 0)]
    assert select_top_heads(ranked, 2) == [(0, 0), (0, 1)]
    with pytest.raises(ValueError, match="exceeds"):
        select_top_heads(ranked, 4)
    with pytest.raises(ValueError, match="non-finite"):
        rank_heads({(0, 0): float("nan")})


# ----------------------------------------------------------------------------- sharper pins
def test_heads_rank_by_score_not_by_position():
    scores = {(0, 0): 0.1, (0, 1): 0.9, (1, 0): 0.5, (1, 1): 0.5}
    assert [k for k, _ in rank_heads(scores)] == [(0, 1), (1, 0), (1, 1), (0, 0)]
    ranked = rank_heads(scores)
    assert select_top_heads(ranked, 1) == [(0, 1)]
    assert select_top_heads(ranked, 4) == [(0, 1), (1, 0), (1, 1), (0, 0)]
    for bad in (0, 5):
        with pytest.raises(ValueError):
            select_top_heads(ranked, bad)


def test_small_kl_is_not_clamped_up():
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    want = 0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4)
    assert float(last_token_kl(p.log(), q.log())[0]) == pytest.approx(want, rel=1e-9)
    assert want < 0.03


def test_reference_angle_with_unequal_norms():
    dense = torch.tensor([[2.0, 7.0], [0.0, 1.0]])
    ablated = torch.tensor([[3.0, 5.0], [3.0, 2.0]])
    assert reference_angle_score(dense, ablated) == pytest.approx(45.0)


def test_default_subspace_rank_is_one():
    dense, ablated = _plane(0.0, 0.0), _plane(0.3, 0.5)
    assert principal_angle_score(dense, ablated) == pytest.approx(0.3, abs=1e-9)


def test_accumulators_add_up_every_update():
    norms = InputNormAccumulator(2)
    norms.update(torch.tensor([[1.0, 2.0], [5.0, 5.0]]), torch.tensor([True, False]))
    norms.update(torch.tensor([[3.0, 0.5]]))
    assert norms.squared_norms().tolist() == [10.0, 4.25] and norms.count == 2
    hessian = HessianAccumulator(2)
    hessian.update(torch.tensor([[1.0, 2.0], [9.0, 9.0]]), torch.tensor([True, False]))
    hessian.update(torch.tensor([[3.0, 1.0]]))
    assert hessian.count == 2
    assert hessian.hessian().tolist() == [[10.0, 5.0], [5.0, 5.0]]  # 2/n * sum x x^T, n = 2
    snip = GradientSaliencyAccumulator()
    for _ in range(3):
        snip.update(torch.tensor([[2.0]]), torch.tensor([[-1.0]]))
    assert snip.scores().tolist() == [[6.0]] and snip.count == 3


def test_wanda_takes_the_root_of_small_norms():
    scores = wanda_scores(torch.tensor([[2.0, -3.0]]), torch.tensor([0.25, 0.04]))
    assert torch.allclose(scores, torch.tensor([[1.0, 0.6]], dtype=torch.float64))


def test_sparsegpt_dead_inputs_get_a_unit_hessian_diagonal():
    h = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 3.0]])
    fixed = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    fixed += 0.01 * fixed.diag().mean() * torch.eye(2, dtype=torch.float64)
    # diagonal H: U = diag(1 / sqrt(H_cc)); the dead column's weight scores 0, as SparseGPT
    # zeroes weights on inputs that never fire
    want = torch.tensor([[1.0 * fixed[0, 0], 0.0]], dtype=torch.float64)
    assert torch.allclose(sparsegpt_scores(w, h), want)
    with pytest.raises(ValueError, match="damping"):
        sparsegpt_scores(w, h, damping=-0.1)
    assert torch.isfinite(sparsegpt_scores(w, fixed, damping=0.0)).all()


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


def test_slices_refuse_impossible_shapes():
    with pytest.raises(ValueError):
        head_slice_mask((8, 8), "q", 0, 0, 4, 0)
    with pytest.raises(ValueError):
        head_slice_mask((8, 8), "q", 0, 0, 0, 2)
    with pytest.raises(ValueError):
        head_slice_mask((4, 8), "q", 0, 0, 4, 2)  # q needs 2 heads x 4 rows
    with pytest.raises(ValueError):
        head_slice_mask((4, 8), "v", 1, 1, 4, 2)  # KV group 1 needs rows 4..7
    with pytest.raises(ValueError):
        head_slice_mask((8, 4), "o", 0, 0, 4, 2)  # o needs 2 heads x 4 columns
    default = union_head_slices((8, 8), "q", [(1, 0)], 4, 2)
    assert default.any(1).nonzero().flatten().tolist() == [4, 5, 6, 7], "exact slicing by default"


# ----------------------------------------------------------------------------- exact messages


def test_head_score_errors_say_what_is_wrong():
    z3, z4 = torch.zeros(2, 3), torch.zeros(2, 4)
    raises_exactly(
        "need two (N, vocab) logit tensors of one shape, got (2, 3) and (2, 4)",
        last_token_kl,
        z3,
        z4,
    )
    raises_exactly(
        "need two (N, vocab) logit tensors of one shape, got (3,) and (3,)",
        last_token_kl,
        torch.zeros(3),
        torch.zeros(3),
    )
    raises_exactly(
        "need two (N, d) state tensors of one shape, got (2, 3) and (2, 4)",
        principal_angle_score,
        z3,
        z4,
    )
    raises_exactly(
        "need two (N, d) state tensors of one shape, got (3,) and (3,)",
        principal_angle_score,
        torch.zeros(3),
        torch.zeros(3),
    )
    raises_exactly("need two (N, d) state tensors of one shape", reference_angle_score, z3, z4)
    raises_exactly(
        "need two (N, d) state tensors of one shape",
        reference_angle_score,
        torch.zeros(3),
        torch.zeros(3),
    )
    ranked = rank_heads({(0, 0): 1.0, (0, 1): 2.0})
    raises_exactly("num_heads must be >= 1, got 0", select_top_heads, ranked, 0)
    raises_exactly("num_heads 3 exceeds the 2 heads scored", select_top_heads, ranked, 3)
    raises_exactly("head (0, 1) has a non-finite score nan", rank_heads, {(0, 1): float("nan")})


def test_importance_errors_say_what_is_wrong():
    acc = InputNormAccumulator(2)
    raises_exactly(
        "token mask covers 2 tokens, inputs have 3",
        acc.update,
        torch.zeros(1, 3, 2),
        torch.ones(1, 2, dtype=torch.bool),
    )
    raises_exactly("inputs have 3 features, the matrix expects 2", acc.update, torch.zeros(1, 3))
    empty = (
        "no response tokens were seen for this matrix: check the calibration data (empty "
        "responses?)"
    )
    raises_exactly(empty, GradientSaliencyAccumulator().scores)
    raises_exactly(
        "Hessian (3, 3) does not match in_features 2",
        sparsegpt_scores,
        torch.zeros(1, 2),
        torch.eye(3),
    )
    raises_exactly(
        "damping must be >= 0, got -0.1",
        sparsegpt_scores,
        torch.zeros(1, 2),
        torch.eye(2),
        damping=-0.1,
    )
    raises_exactly(
        "need a 2-D weight and one norm per input feature; got (1, 2, 2) and (2,)",
        wanda_scores,
        torch.zeros(1, 2, 2),
        torch.ones(2),
    )
    raises_exactly(
        "weight (1, 2) and gradient (2, 1) differ in shape",
        GradientSaliencyAccumulator().update,
        torch.zeros(1, 2),
        torch.zeros(2, 1),
    )


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
        restore_mask,
        s > 0,
        s > 0,
        s.T > 0,
    )
    raises_exactly(
        "shapes differ: pruned (2, 4), dense (2, 4), mask (4, 2)", apply_restore, s, s, s.T > 0
    )


def test_slice_errors_say_what_is_wrong():
    raises_exactly(
        "head slicing mode must be 'exact' or 'reference', got 'both'",
        head_slice_mask,
        (8, 8),
        "q",
        0,
        0,
        4,
        2,
        "both",
    )
    raises_exactly(
        "projection must be one of q, k, v, o; got 'x'", head_slice_mask, (8, 8), "x", 0, 0, 4, 2
    )
    raises_exactly(
        "num_heads (0) and head_dim (4) must be positive", head_slice_mask, (8, 8), "q", 0, 0, 4, 0
    )
    raises_exactly(
        "num_heads (2) and head_dim (0) must be positive", head_slice_mask, (8, 8), "q", 0, 0, 0, 2
    )
    raises_exactly("head 2 is outside [0, 2)", head_slice_mask, (8, 8), "q", 2, 0, 4, 2)
    raises_exactly("kv_group must be >= 0, got -1", head_slice_mask, (8, 8), "k", 0, -1, 4, 2)
    raises_exactly(
        "q_proj has 4 rows, fewer than num_heads*head_dim = 8",
        head_slice_mask,
        (4, 8),
        "q",
        0,
        0,
        4,
        2,
    )
    raises_exactly(
        "v_proj has 4 rows; KV group 1 needs 8", head_slice_mask, (4, 8), "v", 1, 1, 4, 2
    )
    raises_exactly(
        "o_proj has 4 columns, fewer than num_heads*head_dim = 8",
        head_slice_mask,
        (8, 4),
        "o",
        0,
        0,
        4,
        2,
    )
