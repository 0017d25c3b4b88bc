"""hsr_plugin.decoder_stack: the cached re-run of the decoder's tail, refused when it cannot
reproduce the model's logits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hsr_plugin.architecture import (
    UnsupportedArchitectureError,
    find_attention_blocks,
)
from tests.helpers import ToyDecoder, response_samples, tiny_llama


def test_a_decoder_without_final_norm_or_head_is_named():
    from hsr_plugin.decoder_stack import find_decoder_stack

    model = ToyDecoder(SimpleNamespace(num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_decoder_stack(model, find_attention_blocks(model))
    assert str(err.value) == (
        "ToyDecoder: cannot find the final norm next to layers or the output head, which head "
        "attribution runs after the last decoder layer"
    )


def test_a_model_whose_logits_the_decoder_tail_cannot_reproduce_is_refused():
    from hsr_plugin.architecture import UnsupportedArchitectureError, find_attention_blocks
    from hsr_plugin.exact_head_scores import score_heads

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
