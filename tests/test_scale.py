"""HSR at real scale: placement on the execution device, cached and batched exact attribution,
the first-order option, and SNIP gradients that never touch the user's parameters.

The naive loop (one full pass per head, `integration/bench/naive_attribution.py`) is the
reference the cached path must equal.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from hsr_plugin import placement
from hsr_plugin.architecture import find_attention_blocks
from hsr_plugin.attribution import AttributionCost, score_heads
from hsr_plugin.calibration import load_processor
from hsr_plugin.neuron_scoring import collect_statistics
from integration.bench.naive_attribution import naive_head_scores
from tests.helpers import load_model, scoring_setup

ARCHITECTURES = [
    ("llama", "safety"),  # GQA: 4 heads over 2 KV heads
    ("qwen2", "safety"),
    ("llava", "safety"),
    ("llava", "safety_vl"),  # image prompts, one at a time
    ("qwen2_vl", "safety"),
]


def _ranking(scores):
    return [(s.layer, s.head) for s in sorted(scores, key=lambda s: (-s.score, s.layer, s.head))]


@pytest.mark.parametrize("arch, data", ARCHITECTURES)
@pytest.mark.parametrize("method", ["ships_subspace", "ships_kl", "reference"])
@pytest.mark.parametrize("budget", [None, 1], ids=["batched-heads", "one-head-per-pass"])
def test_cached_attribution_equals_the_naive_loop(
    model_dirs, calib_files, arch, data, method, budget
):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, arch, data)
    naive = naive_head_scores(model, blocks, samples, method, batch_size=3, pad_id=pad)
    cached = score_heads(
        model, blocks, samples, method, batch_size=3, pad_id=pad, progress=False,
        memory_budget=budget,
    )  # fmt: skip
    assert [(s.layer, s.head, s.kv_group) for s in cached] == [
        (s.layer, s.head, s.kv_group) for s in naive
    ]
    got = torch.tensor([s.score for s in cached], dtype=torch.float64)
    want = torch.tensor([s.score for s in naive], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9, msg="cached != naive scores")
    assert _ranking(cached) == _ranking(naive), f"{arch}/{method}: rankings differ"


@pytest.mark.parametrize("method", ["ships_subspace", "ships_kl"])
def test_cached_attribution_equals_the_naive_loop_with_logit_softcapping(
    model_dirs, calib_files, method
):
    """Gemma-style final_logit_softcapping is part of the re-run tail."""
    import transformers

    _, _, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    config = transformers.Gemma3TextConfig(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        final_logit_softcapping=3.0, pad_token_id=pad,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    blocks = find_attention_blocks(model)
    naive = naive_head_scores(model, blocks, samples, method, batch_size=3, pad_id=pad)
    cached = score_heads(model, blocks, samples, method, batch_size=3, pad_id=pad, progress=False)
    got = torch.tensor([s.score for s in cached], dtype=torch.float64)
    want = torch.tensor([s.score for s in naive], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    assert _ranking(cached) == _ranking(naive)


def test_cached_attribution_counts_its_work(model_dirs, calib_files, capsys):
    """2 layers x 4 heads: the intact pass, 4 heads over both layers, 4 over the last one,
    whatever the batching (every batch adds to the unit and to the work)."""
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    for batch_size, progress in ((32, False), (2, True)):
        cost = AttributionCost()
        score_heads(model, blocks, samples, "ships_kl", batch_size=batch_size, pad_id=pad,
                    progress=progress, cost=cost)  # fmt: skip
        assert cost.forward_equivalents == pytest.approx(1 + 4 * 2 / 2 + 4 * 1 / 2)
    assert "HSR head scores (ships_kl)" in capsys.readouterr().err
    naive = 1 + 2 * 4
    assert cost.forward_equivalents / naive <= 7 / 9


def _refusal_loss(model, samples, pad, scale=None):
    """Summed NLL of the refusal tokens, with an optional hook scaling an o_proj input slice."""
    from hsr_plugin.attribution import prompt_batches

    total = 0.0
    for batch in prompt_batches(samples, 3, pad, positions=True, full=True):
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits[:, :-1].double()
        target = labels[:, 1:]
        keep = target != -100
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        total += float(-(logp * keep).sum())
    return total


def test_first_order_scores_are_the_derivative_of_zeroing_a_head(model_dirs, calib_files):
    """Score = d/dt L(a - t a_h) at t=0, checked by central finite differences in the test
    (the norms compute in float32 even in a float64 model, hence the step and tolerance)."""
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    model = model.double()
    cost = AttributionCost()
    scores = score_heads(model, blocks, samples, "attribution", pad_id=pad, progress=False,
                         batch_size=3, cost=cost)  # fmt: skip
    # one forward and one backward per batch, over prompt + response (longer than the prompt)
    assert 2 < cost.forward_equivalents < 9 / 2, cost
    block = blocks[1]
    d, delta = block.head_dim, 1e-2

    def scaled(head, t):
        def hook(_module, args):
            x = args[0].clone()
            x[..., head * d : (head + 1) * d] *= 1 - t
            return (x,)

        handle = block.projection("o").register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                return _refusal_loss(model, samples, pad)
        finally:
            handle.remove()

    for head in (0, 3):
        want = (scaled(head, delta) - scaled(head, -delta)) / (2 * delta)
        got = next(s.score for s in scores if (s.layer, s.head) == (1, head))
        assert got == pytest.approx(want, rel=1e-3), f"head {head}: {got} vs {want}"


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


# ----------------------------------------------------------------------------- placement
def test_the_placement_decision():
    from compressed_tensors.offload import dispatch_model

    from hsr_plugin.placement import Placement

    cuda = torch.device("cuda", 0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert placement.decide_placement(model, cuda) == Placement(
        "dispatch", "on the CPU while cuda:0 is available", cuda
    )
    assert placement.decide_placement(model, None) == Placement(
        "cpu", "no accelerator is available", None
    )
    on_meta = torch.nn.Sequential(torch.nn.Linear(4, 4, device="meta"))
    assert placement.decide_placement(on_meta, cuda).action == "dispatch"
    accelerate_dispatched = torch.nn.Sequential(torch.nn.Linear(4, 4))
    accelerate_dispatched[0]._hf_hook = object()
    assert placement.decide_placement(accelerate_dispatched, cuda) == Placement(
        "keep", "already dispatched by accelerate", cuda
    )

    class OnAnAccelerator(torch.nn.Module):  # parameters that report a CUDA device
        def parameters(self, recurse=True):
            from types import SimpleNamespace

            yield SimpleNamespace(device=torch.device("cuda", 0))

    assert placement.decide_placement(OnAnAccelerator(), cuda) == Placement(
        "keep", "already on cuda", cuda
    )
    dispatch_model(model, device_memory={torch.device("cpu"): 1 << 20}, extra_memory=0)
    assert placement.decide_placement(model, cuda) == Placement(
        "keep", "already dispatched by compressed-tensors", cuda
    )


def _forced_offload_memory(model):
    """A device-memory map that holds about half of the model: the rest is offloaded."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {torch.device("cpu"): size // 2}


def _offloaded(model):
    from compressed_tensors.offload.cache import OffloadCache

    return sum(isinstance(m._parameters, OffloadCache) for m in model.modules())


def test_hsr_dispatches_a_cpu_model_and_hands_it_back_exactly(model_dirs, calib_files):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    before = placement.dispatch_state(model)
    reference = score_heads(model, blocks, samples, pad_id=pad, progress=False)
    memory = _forced_offload_memory(model)
    with placement.execution_placement(
        model, accelerator=lambda: torch.device("cpu"), device_memory=memory, extra_memory=0
    ) as placed:
        assert placed.action == "dispatch" and _offloaded(model) > 0
        dispatched = score_heads(model, blocks, samples, pad_id=pad, progress=False)
    assert placement.dispatch_state(model) == before, "the model must come back as it was"
    assert _offloaded(model) == 0
    assert [s.score for s in dispatched] == [s.score for s in reference]


def test_no_accelerator_runs_on_the_cpu_and_says_so(model_dirs, calib_files):
    from loguru import logger

    model, *_ = scoring_setup(model_dirs, calib_files, "llama", "safety")
    lines = []
    sink = logger.add(lines.append, level="INFO")
    try:
        with placement.execution_placement(model, accelerator=lambda: None) as placed:
            assert placed.device == torch.device("cpu") and _offloaded(model) == 0
    finally:
        logger.remove(sink)
    assert sum("no accelerator available" in line for line in lines) == 1


HSR_EXTRA = "      neuron_score: {score}\n"


@pytest.mark.parametrize("score", ["wanda", "snip"])
def test_oneshot_on_an_offloaded_model_is_bit_identical(model_dirs, calib_files, score):
    """A model that compressed-tensors offloaded before oneshot (half of it held off the
    execution device by an explicit device-memory map) gives the same head scores and the same
    restored weights as the plain model; so does a CPU model that HSR dispatches itself."""
    from compressed_tensors.offload import dispatch_model
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier
    from hsr_plugin.oneshot_data import calibration_kwargs
    from tests.helpers import HSR, WANDA

    model_dir = model_dirs["llama"]
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2,
        safety=calib_files["safety"],
        utility=calib_files["utility"],
        extra=HSR_EXTRA.format(score=score),
    )
    processor = load_processor(str(model_dir))

    def run(prepare):
        model = load_model(model_dir)
        prepare(model)
        oneshot(
            model=model,
            processor=processor,
            recipe=recipe,
            max_seq_length=128,
            shuffle_calibration_samples=False,
            **calibration_kwargs(str(calib_files["utility"]), processor, None, 128),
        )
        mods = active_session().lifecycle.recipe.modifiers
        report = next(m for m in mods if isinstance(m, HSRModifier)).report
        weights = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                from compressed_tensors.utils import align_module_device

                with align_module_device(module):
                    weights[name] = module.weight.detach().cpu().clone()
        return report, weights

    plain_report, plain = run(lambda m: None)
    offload_report, offloaded = run(
        lambda m: dispatch_model(m, device_memory=_forced_offload_memory(m), extra_memory=0)
    )
    assert offload_report["scoring"]["placement"] == "already dispatched by compressed-tensors"
    with (
        mock.patch.object(placement, "accelerator_device", lambda: torch.device("cpu")),
        mock.patch.object(placement, "_device_memory", lambda: {torch.device("cpu"): 8 << 30}),
    ):
        self_report, self_dispatched = run(lambda m: None)
    assert self_report["scoring"]["placement"].startswith("on the CPU while")
    for report, weights in ((offload_report, offloaded), (self_report, self_dispatched)):
        assert report["heads"] == plain_report["heads"]
        assert report["restored"] == plain_report["restored"]
        assert plain_report["totals"]["restored"] > 0
        for name, weight in plain.items():
            assert torch.equal(weights[name], weight), name


def test_statistics_stop_the_forward_pass_after_the_last_selected_layer(model_dirs, calib_files):
    """Wanda/SparseGPT statistics need the inputs of the selected layers only: nothing after
    the last of them runs, and the statistics equal those of full passes."""
    from hsr_plugin.importance import InputNormAccumulator

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
