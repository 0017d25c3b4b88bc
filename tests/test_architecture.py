"""hsr_plugin.architecture: finding the language model's self-attention blocks and gated MLPs in
every layout, and refusing the ones HSR cannot slice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import hsr_plugin  # noqa: F401
from hsr_plugin.architecture import (
    UnsupportedArchitectureError,
    find_attention_blocks,
    text_config,
)
from tests.helpers import (
    ToyAttention,
    ToyDecoder,
    load_model,
    tiny_llama,
)


class _InterleavedAttention(nn.Module):  # GPT-NeoX: query_key_value interleaved per head
    def __init__(self):
        super().__init__()
        self.query_key_value = nn.Linear(8, 24)
        self.dense = nn.Linear(8, 8)


class _FusedModel(nn.Module):
    def __init__(self, attention: nn.Module):
        super().__init__()
        self.config = SimpleNamespace(num_attention_heads=2, num_key_value_heads=2)
        self.layers = nn.ModuleList([nn.Module()])
        self.layers[0].self_attn = attention


def _text_config(cls_name: str, **extra):
    import transformers

    tok_len = 400
    base = dict(
        vocab_size=tok_len,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    base.update(extra)
    return getattr(transformers, cls_name)(**base)


def test_a_fused_layout_hsr_cannot_slice_is_refused_naming_the_module():
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(_FusedModel(_InterleavedAttention()))
    assert str(err.value) == (
        "layers.0.self_attn.query_key_value: fused attention projection (Linear) in a layout HSR "
        "cannot slice by heads; it supports separate q_proj/k_proj/v_proj/o_proj, a [q; k; v] "
        "qkv_proj (Phi-3) and multi-head latent attention (DeepSeek)"
    )


def test_a_qkv_proj_that_is_not_a_q_k_v_stack_is_refused():
    attention = nn.Module()
    attention.qkv_proj, attention.o_proj = nn.Linear(8, 20), nn.Linear(8, 8)
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(_FusedModel(attention))
    assert str(err.value) == (
        "layers.0.self_attn: qkv_proj out_features 20 != (heads 2 + 2 x kv heads 2) x head_dim 4: "
        "not a [q; k; v] stack"
    )


def test_model_without_attention():
    with pytest.raises(UnsupportedArchitectureError, match="no language self-attention blocks"):
        find_attention_blocks(nn.Sequential(nn.Linear(4, 4)))


def test_head_dim_is_derived_as_an_integer_when_the_config_has_none():
    model = ToyDecoder(SimpleNamespace(num_attention_heads=2, num_key_value_heads=1))
    (block,) = find_attention_blocks(model)
    assert (block.num_heads, block.num_kv_heads, block.head_dim) == (2, 1, 4)
    assert type(block.head_dim) is int


def test_no_attention_within_the_targets_says_so():
    model = ToyDecoder(SimpleNamespace(num_attention_heads=2))
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(model, within=["lm_head"])
    assert str(err.value) == (
        "no language self-attention blocks (q_proj/k_proj/v_proj/o_proj, a fused qkv_proj, or "
        "multi-head latent attention) found in ToyDecoder within the targeted modules"
    )
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(nn.Sequential(nn.Linear(2, 2)))
    assert str(err.value).endswith("found in Sequential")


def test_text_config_prefers_get_text_config_then_text_config():
    inner, decoder = SimpleNamespace(name="text"), SimpleNamespace(name="decoder")
    asks = []

    class WithGetter(SimpleNamespace):
        def get_text_config(self, decoder):
            asks.append(decoder)
            return decoder_config

    decoder_config = decoder
    getter = WithGetter(text_config=inner)
    assert text_config(SimpleNamespace(config=getter)) is decoder and asks == [True]
    assert text_config(SimpleNamespace(config=SimpleNamespace(text_config=inner))) is inner
    plain = SimpleNamespace(num_attention_heads=2)
    assert text_config(SimpleNamespace(config=plain)) is plain


def test_a_model_is_multimodal_when_its_config_has_a_vision_config():
    from hsr_plugin.architecture import is_multimodal

    assert is_multimodal(SimpleNamespace(config=SimpleNamespace(vision_config={})))
    assert not is_multimodal(SimpleNamespace(config=SimpleNamespace(text_config={})))
    assert not is_multimodal(nn.Linear(2, 2))


def test_cross_and_encoder_attention_are_not_self_attention():
    model = ToyDecoder(SimpleNamespace(num_attention_heads=2, num_key_value_heads=1))
    for name in ("encoder_attn", "cross_attn", "cross_attention"):
        setattr(model.layers[0], name, ToyAttention())
    assert [b.name for b in find_attention_blocks(model)] == ["layers.0.self_attn"]
    with pytest.raises(UnsupportedArchitectureError) as err:
        text_config(nn.Linear(2, 2))
    assert str(err.value) == "Linear has no `config`"


@pytest.mark.parametrize(
    "model_cls, config_cls, extra",
    [
        ("LlamaForCausalLM", "LlamaConfig", {}),
        ("Qwen2ForCausalLM", "Qwen2Config", {}),
        ("MistralForCausalLM", "MistralConfig", {}),
        ("Gemma3ForCausalLM", "Gemma3TextConfig", {"head_dim": 16}),
    ],
)
def test_text_architectures(model_cls, config_cls, extra):
    import transformers

    model = getattr(transformers, model_cls)(_text_config(config_cls, **extra))
    blocks = find_attention_blocks(model)
    assert [b.layer for b in blocks] == [0, 1]
    assert (blocks[0].num_heads, blocks[0].num_kv_heads, blocks[0].head_dim) == (4, 2, 16)
    assert blocks[0].kv_group(3) == 1


def test_vlm_architectures_return_only_language_self_attention(model_dirs):
    for name in ("llava", "qwen2_vl"):
        blocks = find_attention_blocks(load_model(model_dirs[name]))
        assert len(blocks) == 2
        assert all("language_model" in b.name for b in blocks), [b.name for b in blocks]


@pytest.mark.parametrize(
    ("builder", "layers"),
    [("build_llava_next", [0, 1]), ("build_qwen2_5_vl", [0, 1]), ("build_mllama", [0, 2])],
)
def test_vlm_families_give_their_language_self_attention_only(builder, layers, tmp_path):
    """The language model's self-attention of each family, built from its own config class;
    Mllama's cross-attention layer 1 is not self-attention and is skipped."""
    from integration.bench import tiny_vlms_llava_qwen_mllama as vlms

    model = load_model(getattr(vlms, builder)(tmp_path / builder))
    blocks = find_attention_blocks(model)
    assert [b.layer for b in blocks] == layers
    assert all(b.name.startswith("model.language_model.layers.") for b in blocks)


def test_find_mlp_blocks_keeps_only_the_asked_layers():
    from hsr_plugin.mlp_blocks import find_mlp_blocks

    model = tiny_llama()
    assert [b.layer for b in find_mlp_blocks(model)] == [0, 1, 2]
    blocks = find_mlp_blocks(model, layers=[2, 0])
    assert [(b.layer, b.name, b.intermediate) for b in blocks] == [
        (0, "model.layers.0.mlp", 24),
        (2, "model.layers.2.mlp", 24),
    ]


def test_a_model_without_gated_mlps_is_named():
    from hsr_plugin.architecture import UnsupportedArchitectureError
    from hsr_plugin.mlp_blocks import find_mlp_blocks

    with pytest.raises(UnsupportedArchitectureError) as err:
        find_mlp_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert str(err.value) == (
        "no gated MLP (gate_proj/up_proj/down_proj) found in Sequential's decoder layers: "
        "MLP realignment (units: [heads, mlp]) needs one"
    )


def test_mla_whose_keys_transformers_would_repeat_is_refused_before_any_pass():
    """DeepSeek attention with num_key_value_heads below num_attention_heads: a single unpadded
    prompt runs, but transformers itself fails on a padded batch, which HSR's scoring makes."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=8, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        first_k_dense_replace=1, n_group=1, topk_group=1,
    )  # fmt: skip
    model = DeepseekV3ForCausalLM(config).eval()
    padded = {
        "input_ids": torch.tensor([[1, 5, 6], [1, 5, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    with pytest.raises(RuntimeError, match="must match"):  # transformers' own limit
        model(**padded)
    with pytest.raises(
        UnsupportedArchitectureError,
        match=r"num_key_value_heads 4 below num_attention_heads 8: transformers repeats this "
        r"layer's per-head keys 2 times",
    ):
        find_attention_blocks(model)
    config.num_key_value_heads = 8  # as DeepSeek's published configs: found, one group a head
    block = find_attention_blocks(DeepseekV3ForCausalLM(config))[0]
    assert block.layout == "mla" and block.num_heads == block.num_kv_heads == 8
