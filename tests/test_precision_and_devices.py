"""Where statistics live and in what precision: the accumulators and the gradient means keep the
device they are given (the meta device stands in for an accelerator on a CPU-only machine), the
SparseGPT damping is added in float64, and a non-finite loss is named."""

from __future__ import annotations

import pytest
import torch

from hsr_plugin.hooks import hooks_mixin
from hsr_plugin.importance import HessianAccumulator, InputNormAccumulator, sparsegpt_scores
from hsr_plugin.neuron_scoring import mean_weight_gradients
from tests.helpers import response_samples, tiny_llama


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


def test_gradient_means_go_to_the_statistics_device_through_the_given_hooks():
    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    modules = {"q": model.model.layers[0].self_attn.q_proj}
    registered = []

    class Recording(hooks_mixin()):
        def register_hook(self, target, *args, **kwargs):
            registered.append(target)
            return super().register_hook(target, *args, **kwargs)

    owner = Recording()
    on_cpu = mean_weight_gradients(
        model, modules, response_samples(), "t", progress=False, hooks=owner
    )
    assert registered == [modules["q"]] and on_cpu["q"].device.type == "cpu"
    on_meta = mean_weight_gradients(
        model, modules, response_samples(), "t", progress=False, stats_device="meta"
    )
    assert on_meta["q"].device.type == "meta" and on_meta["q"].shape == (16, 16)


def test_a_non_finite_response_loss_is_named():
    model = tiny_llama(layers=1).eval()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    modules = {"q": model.model.layers[0].self_attn.q_proj}
    with pytest.raises(ValueError) as err:
        mean_weight_gradients(model, modules, response_samples(1), "SNIP", progress=False)
    assert str(err.value) == "SNIP: the response NLL is not finite; check the calibration data"


def test_first_order_scores_show_a_progress_bar_only_when_asked(capsys):
    from hsr_plugin.attribution import first_order_unit_scores

    model = tiny_llama(layers=1).eval()
    o_proj = model.model.layers[0].self_attn.o_proj
    runs = {}
    for progress in (True, False):
        scores = first_order_unit_scores(
            model, {"o": (o_proj, 2, 8)}, response_samples(), 2, 0, torch.device("cpu"),
            hooks_mixin()(), progress=progress,
        )  # fmt: skip
        runs[progress] = (scores["o"], capsys.readouterr().err)
    assert "HSR unit scores (first order)" in runs[True][1]
    assert "HSR unit scores" not in runs[False][1]
    assert torch.equal(runs[True][0], runs[False][0]) and runs[True][0].shape == (2,)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "snip"])
def test_statistics_progress_bars_name_the_pass_and_the_method(capsys, method):
    from hsr_plugin.neuron_scoring import collect_statistics

    model = tiny_llama(layers=1).eval()
    modules = {"q": model.model.layers[0].self_attn.q_proj}
    stats = collect_statistics(model, modules, response_samples(), method, "HSR safety importance")
    assert f"HSR safety importance ({method})" in capsys.readouterr().err
    collect_statistics(model, modules, response_samples(), method, "quiet", progress=False)
    assert "quiet" not in capsys.readouterr().err
    assert list(stats) == ["q"]
    with pytest.raises(ValueError, match="^neuron scoring needs at least one calibration sample$"):
        collect_statistics(model, modules, [], method)


def test_the_activation_budget_is_a_quarter_of_the_accelerators_free_memory(monkeypatch):
    from hsr_plugin.attribution import DEFAULT_CPU_BUDGET, activation_memory_budget, heads_per_pass

    asked = []

    def memory_info(index):
        asked.append(index)
        return 4003, 8000

    monkeypatch.setattr(torch.accelerator, "get_memory_info", memory_info, raising=False)
    budget = activation_memory_budget(torch.device("cuda", 1), None)
    assert budget == 1000 and type(budget) is int and asked == [1]
    assert activation_memory_budget(torch.device("cuda", 1), 77) == 77
    assert activation_memory_budget(torch.device("cpu"), None) == DEFAULT_CPU_BUDGET
    # per replica: rows x width x (6 hidden + 3 intermediate + heads x width) x 4 bytes
    per_replica = 2 * 3 * (6 * 8 + 3 * 16 + 4 * 3) * 4
    assert heads_per_pass(10 * per_replica + 5, 2, 3, 8, 16, 4) == 10
    assert heads_per_pass(per_replica - 1, 2, 3, 8, 16, 4) == 1  # at least one head a pass


def test_head_scores_default_to_ships_subspace_and_refuse_non_finite_outputs():
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.attribution import score_heads

    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    blocks = find_attention_blocks(model)
    default = score_heads(model, blocks, response_samples(3), progress=False)
    explicit = score_heads(model, blocks, response_samples(3), "ships_subspace", progress=False)
    assert [s.score for s in default] == [s.score for s in explicit]
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError) as err:
        score_heads(model, blocks, response_samples(3), "ships_kl", progress=False)
    assert str(err.value) == (
        "head attribution: the next-token logits or final states of the intact model on the "
        "safety prompts are not finite (NaN or inf), so its head score would be too"
    )


def test_a_model_whose_logits_the_decoder_tail_cannot_reproduce_is_refused():
    from hsr_plugin.architecture import UnsupportedArchitectureError, find_attention_blocks
    from hsr_plugin.attribution import score_heads

    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    blocks = find_attention_blocks(model)

    # an extra scaling after the output head, unknown to the re-run tail (norm + lm_head)
    def scale(_module, _args, out):
        out.logits.mul_(2.0)

    model.register_forward_hook(scale)
    with pytest.raises(UnsupportedArchitectureError) as err:
        score_heads(model, blocks, response_samples(1), "ships_kl", progress=False)
    assert str(err.value) == (
        "LlamaForCausalLM: the final norm and output head applied to the last decoder layer's "
        "output do not reproduce the model's logits (a final factor HSR does not know?), so head "
        "attribution cannot re-run the decoder from a layer"
    )
