"""hsr_plugin.importance: Wanda, SparseGPT and SNIP weight importance from accumulated statistics,
their precision and their errors, without any model."""

from __future__ import annotations

import pytest
import torch

from hsr_plugin.importance import (
    GradientSaliencyAccumulator,
    HessianAccumulator,
    InputNormAccumulator,
    sparsegpt_scores,
    wanda_scores,
)
from tests.helpers import (
    raises_exactly,
)


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


def test_the_hessian_multiplies_in_float32_whatever_the_input_dtype():
    from hsr_plugin.importance import HessianAccumulator

    torch.manual_seed(0)
    x = torch.randn(5, 6).to(torch.bfloat16)
    acc = HessianAccumulator(6)
    acc.update(x)
    expected = x.float().T @ x.float() * (2.0 / 5)
    assert acc.hessian().dtype == torch.float32
    assert torch.equal(acc.hessian(), expected)


def test_accumulators_keep_float32_statistics_on_their_device():
    for acc in (HessianAccumulator(3, device="meta"), InputNormAccumulator(3, device="meta")):
        acc.update(torch.ones(2, 3, dtype=torch.float16, device="meta"))
        stat = acc.hessian() if isinstance(acc, HessianAccumulator) else acc.squared_norms()
        assert (stat.device.type, stat.dtype) == ("meta", torch.float32)
    cpu = HessianAccumulator(3)
    cpu.update(torch.ones(2, 3, dtype=torch.float64))
    assert cpu.hessian().dtype == torch.float32


def test_sparsegpt_damping_is_added_in_float64():
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    h = 2 * x.T @ x / 40
    w = torch.randn(2, 3, dtype=torch.float64)
    damped = h + 1.0 * h.diag().mean() * torch.eye(3, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    expected = w**2 / u.diag() ** 2
    torch.testing.assert_close(sparsegpt_scores(w, h, damping=1.0), expected, rtol=1e-13, atol=0)
