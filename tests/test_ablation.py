"""hsr_plugin.ablation: zeroing one head (or, in reference mode, one KV group) changes only that
head's output."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hsr_plugin.ablation import ablate_head
from hsr_plugin.architecture import (
    find_attention_blocks,
)
from tests.helpers import ToyDecoder, load_model


def test_reference_units_are_kv_groups():
    from hsr_plugin.ablation import check_unit

    config = SimpleNamespace(num_attention_heads=2, num_key_value_heads=1)
    (block,) = find_attention_blocks(ToyDecoder(config))
    check_unit(block, 1, "exact")
    with pytest.raises(ValueError) as err:
        check_unit(block, 1, "reference")
    assert str(err.value) == "reference ablation scores KV groups: 1 >= 1"


def test_gqa_ablation_changes_only_that_heads_output(model_dirs):
    """On the input o_proj really multiplies (read in a forward hook, after every pre-hook):
    head h's slice is scaled down to ~eps, the other heads' slices are bit-identical, and o_proj's
    output loses exactly head h's contribution."""
    eps = 1e-5
    model = load_model(model_dirs["llama"]).eval()
    block = find_attention_blocks(model)[1]
    o_proj, d = block.projection("o"), block.head_dim
    captured = {}

    def capture(_module, args, output):
        captured["x"], captured["y"] = args[0].clone(), output.clone()

    handle = o_proj.register_forward_hook(capture)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    try:
        with torch.no_grad():
            model(input_ids=ids)
            intact = captured["x"]
            for head in range(block.num_heads):
                with ablate_head(block, head, eps=eps):
                    model(input_ids=ids)
                ablated, out = captured["x"], captured["y"]
                mine = torch.zeros(intact.shape[-1], dtype=torch.bool)
                mine[head * d : (head + 1) * d] = True
                assert torch.equal(ablated[..., ~mine], intact[..., ~mine]), f"head {head} leaked"
                assert ablated[..., mine].abs().max() <= 10 * eps * intact.abs().max(), (
                    f"head {head}: the o_proj input of the head must be scaled by eps"
                )
                without = intact[..., ~mine] @ o_proj.weight[:, ~mine].T
                assert torch.allclose(out, without, atol=1e-4), f"head {head}: contribution left"
    finally:
        handle.remove()


def test_reference_ablation_scales_the_kv_group_too(model_dirs):
    """Reference mode (the authors' code) ablates unit g: q rows and o_proj columns of head g and
    the k/v rows of KV group g, read after the ablation hooks ran."""
    eps = 1e-5
    model = load_model(model_dirs["llama"]).eval()
    block = find_attention_blocks(model)[0]
    d, ids = block.head_dim, torch.tensor([[1, 20, 30, 40, 50]])
    seen = {}

    def keep(short):
        return lambda _m, _a, out: seen.__setitem__(short, out.clone())

    with torch.no_grad():
        handles = [block.projection(s).register_forward_hook(keep(s)) for s in "kv"]
        model(input_ids=ids)
        intact = dict(seen)
        for handle in handles:
            handle.remove()
        for group in range(block.num_kv_heads):
            with ablate_head(block, group, eps=eps, mode="reference"):
                handles = [block.projection(s).register_forward_hook(keep(s)) for s in "kv"]
                model(input_ids=ids)
                for handle in handles:
                    handle.remove()
            rows = torch.zeros(intact["k"].shape[-1], dtype=torch.bool)
            rows[group * d : (group + 1) * d] = True
            for short in "kv":
                assert torch.allclose(seen[short][..., rows], eps * intact[short][..., rows]), (
                    f"reference ablation must scale {short}_proj rows of KV group {group}"
                )
                assert torch.equal(seen[short][..., ~rows], intact[short][..., ~rows])
