"""hsr_plugin.neuron_scoring: collecting statistics and gradients on the execution device, with
progress bars, stopping after the last selected layer, and naming a matrix no response token
reached."""

from __future__ import annotations

import pytest
import torch
from llmcompressor.modifiers.utils.hooks import HooksMixin

from hsr_plugin.importance import InputNormAccumulator
from hsr_plugin.neuron_scoring import collect_statistics, mean_weight_gradients
from tests.helpers import response_samples, scoring_setup, tiny_llama


def test_gradient_means_go_to_the_statistics_device_through_the_given_hooks():
    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    modules = {"q": model.model.layers[0].self_attn.q_proj}
    registered = []

    class Recording(HooksMixin):
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


def test_snip_uses_autograd_and_leaves_the_parameters_alone(model_dirs, calib_files):
    model, blocks, samples, _pad = scoring_setup(model_dirs, calib_files, "llama", "safety", rows=3)
    modules = {name: m for _, name, m in blocks[0].projections()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    stats = collect_statistics(model, modules, samples, "snip", progress=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    # reference: |W * dL/dW| summed over samples, from loss.backward on a copy of the model
    import copy

    twin = copy.deepcopy(model)
    twin_modules = dict(twin.named_modules())
    expected = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    for sample in samples:
        twin.zero_grad(set_to_none=True)
        labels = torch.where(sample.response_mask, sample.input_ids, -100)
        twin(**sample.model_inputs(), labels=labels, use_cache=False).loss.backward()
        for name in modules:
            weight = twin_modules[name].weight
            expected[name] += (weight.detach() * weight.grad).abs()
    for name in modules:
        torch.testing.assert_close(stats[name].scores(), expected[name], rtol=1e-4, atol=1e-7)


def test_statistics_stop_the_forward_pass_after_the_last_selected_layer(model_dirs, calib_files):
    """Wanda/SparseGPT statistics need the inputs of the selected layers only: nothing after
    the last of them runs, and the statistics equal those of full passes."""

    model, blocks, samples, _pad = scoring_setup(model_dirs, calib_files, "llama", "safety", rows=3)
    modules = {name: m for _, name, m in blocks[0].projections()}
    calls = []
    handle = model.model.layers[1].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        stats = collect_statistics(model, modules, samples, "wanda", progress=False)
    finally:
        handle.remove()
    assert calls == [], "layer 1 must not run when only layer 0 is scored"
    for name, module in modules.items():
        reference = InputNormAccumulator(module.in_features)
        seen = []
        hook = module.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0]))
        try:
            with torch.no_grad():
                for sample in samples:
                    seen.clear()
                    model(**sample.model_inputs(), use_cache=False)
                    reference.update(seen[0], sample.response_mask)
        finally:
            hook.remove()
        torch.testing.assert_close(stats[name].squared_norms(), reference.squared_norms())
    # left-padded batches: pads are never response tokens, the sums are the same
    batched = collect_statistics(
        model, modules, samples, "sparsegpt", progress=False, batch_size=3, pad_id=_pad
    )
    single = collect_statistics(model, modules, samples, "sparsegpt", progress=False)
    for name in modules:
        assert batched[name].count == single[name].count
        torch.testing.assert_close(batched[name].hessian(), single[name].hessian())


def test_a_matrix_that_saw_no_response_token_is_named():
    from hsr_plugin.neuron_scoring import require_seen

    seen, unseen = InputNormAccumulator(2), InputNormAccumulator(2)
    seen.update(torch.ones(1, 3, 2))
    require_seen({"a": seen})
    with pytest.raises(ValueError) as err:
        require_seen({"a": seen, "b": unseen, "c": InputNormAccumulator(2)})
    assert str(err.value) == (
        "no response tokens reached b (and 1 more): check the calibration data"
    )
