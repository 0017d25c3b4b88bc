"""hsr_plugin.placement: where scoring runs (the execution device), and a model handed back exactly
as found, offloaded or not."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from hsr_plugin import placement
from hsr_plugin.exact_head_scores import score_heads
from tests.helpers import (
    log_messages,
    run_oneshot,
    scoring_setup,
)


def _forced_offload_memory(model):
    """A device-memory map that holds about half of the model: the rest is offloaded."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {torch.device("cpu"): size // 2}


def _offloaded(model):
    from compressed_tensors.offload.cache import OffloadCache

    return sum(isinstance(m._parameters, OffloadCache) for m in model.modules())


HSR_EXTRA = "      neuron_score: {score}\n"


def test_the_dispatch_state_of_a_plain_cpu_module():
    from hsr_plugin.placement import dispatch_state

    # modules without tensors (activations, containers) fall back to the CPU quietly
    with log_messages("WARNING") as warnings:
        relu_state = dispatch_state(torch.nn.Sequential(torch.nn.ReLU()))
    assert warnings == [] and relu_state["0"] == (False, "cpu", "cpu", False, ())

    layer = torch.nn.Linear(2, 3)
    state = dispatch_state(torch.nn.Sequential(layer))
    weight, bias = layer.weight, layer.bias
    assert state["0"] == (
        False,
        "cpu",
        "cpu",
        False,
        (
            ("bias", (id(bias), "cpu", torch.float32)),
            ("weight", (id(weight), "cpu", torch.float32)),
        ),
    )


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


@pytest.mark.parametrize("score", ["wanda", "snip"])
def test_oneshot_on_an_offloaded_model_is_bit_identical(model_dirs, calib_files, score):
    """A model that compressed-tensors offloaded before oneshot (half of it held off the
    execution device by an explicit device-memory map) gives the same head scores and the same
    restored weights as the plain model; so does a CPU model that HSR dispatches itself."""
    from compressed_tensors.offload import dispatch_model
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier
    from tests.helpers import HSR, WANDA

    model_dir = model_dirs["llama"]
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2,
        safety=calib_files["safety"],
        utility=calib_files["utility"],
        extra=HSR_EXTRA.format(score=score),
    )

    def run(prepare):
        model = run_oneshot(model_dir, recipe, calib_files["utility"], prepare=prepare)
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
        mock.patch.object(
            placement, "available_device_memory", lambda: {torch.device("cpu"): 8 << 30}
        ),
    ):
        self_report, self_dispatched = run(lambda m: None)
    assert self_report["scoring"]["placement"].startswith("on the CPU while")
    for report, weights in ((offload_report, offloaded), (self_report, self_dispatched)):
        assert report["heads"] == plain_report["heads"]
        assert report["restored"] == plain_report["restored"]
        assert plain_report["totals"]["restored"] > 0
        for name, weight in plain.items():
            assert torch.equal(weights[name], weight), name


def test_an_execution_device_on_the_disk_is_refused(monkeypatch):
    import compressed_tensors.offload as offload

    from hsr_plugin.placement import execution_device

    model = torch.nn.Linear(2, 2)
    assert execution_device(model) == torch.device("cpu")
    monkeypatch.setattr(offload, "get_execution_device", lambda module: "disk")
    with pytest.raises(ValueError, match="execution device is the disk"):
        execution_device(model)
