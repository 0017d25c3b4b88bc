"""hsr_plugin.head_score_math: the per-head safety scores (KL, principal angles, the reference
angle) and their ranking, tested without any model."""

from __future__ import annotations

import math

import pytest
import torch

from hsr_plugin.head_score_math import (
    last_token_kl,
    principal_angle_score,
    rank_heads,
    reference_angle_score,
    select_top_heads,
)
from tests.helpers import (
    raises_exactly,
)


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


def test_kl_is_kl_of_dense_against_ablated_on_a_hand_computed_case():
    """p = (0.7, 0.2, 0.1), q = (0.1, 0.3, 0.6): KL(p||q) = 1.101868, KL(q||p) = 1.002104."""
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).log()
    q = torch.tensor([[0.1, 0.3, 0.6]], dtype=torch.float64).log()
    want = 0.7 * math.log(7) + 0.2 * math.log(2 / 3) + 0.1 * math.log(1 / 6)
    assert float(last_token_kl(p, q)[0]) == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx(1.101868, abs=1e-6)
    assert float(last_token_kl(q, p)[0]) == pytest.approx(1.002104, abs=1e-6), "argument order"
    assert float(last_token_kl(p + 3.0, q - 1.0)[0]) == pytest.approx(want, rel=1e-9)


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


def test_the_reference_angle_of_opposite_vectors_is_180_degrees_despite_rounding():
    from hsr_plugin.head_score_math import reference_angle_score

    # with these values a @ -a / (|a| |a|) rounds to -1.0000000000000002, outside acos' domain
    v = torch.tensor([1.4565026067903366, 0.9398099079535257, 0.7748488177844168,
                      0.19186942747902466, 1.2637947253235853, -1.29043510317847,
                      -0.7911026902762878], dtype=torch.float64)  # fmt: skip
    dense = torch.stack([v, v], dim=1)
    assert reference_angle_score(dense, -dense) == pytest.approx(180.0)
    assert reference_angle_score(dense, dense) == pytest.approx(0.0, abs=1e-6)
