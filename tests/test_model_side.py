"""Architecture discovery, per-head ablation, dense sources and calibration rendering, on tiny
models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from hsr_plugin.ablation import ablate_head
from hsr_plugin.architecture import find_attention_blocks
from hsr_plugin.calibration import (
    Conversation,
    load_conversations,
    load_processor,
    load_vlguard,
    render_samples,
)
from hsr_plugin.dense_source import DenseSnapshot, SafetensorsDenseSource, checkpoint_key_candidates
from tests.helpers import load_model
from tests.tiny_models import TINY_CLIP, build_tokenizer, write_image


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


def test_llava_next_and_qwen25_vl_and_mllama_from_configs():
    import transformers

    text = dict(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    next_model = transformers.LlavaNextForConditionalGeneration(
        transformers.LlavaNextConfig(
            text_config=transformers.LlamaConfig(**text),
            vision_config=transformers.CLIPVisionConfig(**TINY_CLIP),
            image_grid_pinpoints=[[32, 32]],
        )
    )
    assert [b.name for b in find_attention_blocks(next_model)] == [
        "model.language_model.layers.0.self_attn",
        "model.language_model.layers.1.self_attn",
    ]

    qwen25 = transformers.Qwen2_5_VLForConditionalGeneration(
        transformers.Qwen2_5_VLConfig(
            text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                fullatt_block_indexes=[0],
            ),
        )
    )
    assert len(find_attention_blocks(qwen25)) == 2

    mllama = transformers.MllamaForConditionalGeneration(
        transformers.MllamaConfig(
            text_config=dict(text, cross_attention_layers=[1], num_hidden_layers=3, pad_token_id=0),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_global_layers=1,
                attention_heads=2,
                image_size=32,
                patch_size=8,
                vision_output_dim=64,
                intermediate_layers_indices=[0],
            ),
        )
    )
    blocks = find_attention_blocks(mllama)
    assert [b.layer for b in blocks] == [0, 2], "Mllama's cross-attention layer 1 is skipped"


def test_gqa_ablation_changes_only_that_heads_output(model_dirs):
    """Directly on the attention output (the o_proj input): only head h's slice moves."""
    model = load_model(model_dirs["llama"]).eval()
    block = find_attention_blocks(model)[1]
    captured = {}
    handle = block.projection("o").register_forward_pre_hook(
        lambda m, a: captured.__setitem__("x", a[0].clone())
    )
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        model(input_ids=ids)
        intact = captured["x"]
        for head in range(block.num_heads):
            # only the o_proj input of this head must change; the pre-hook that scales it runs
            # after ours, so capture the query's effect through the attention itself
            with ablate_head(block, head, eps=1e-5):
                model(input_ids=ids)
            ablated = captured["x"]
            d = block.head_dim
            others = torch.ones(intact.shape[-1], dtype=torch.bool)
            others[head * d : (head + 1) * d] = False
            assert torch.equal(ablated[..., others], intact[..., others]), (
                f"head {head} leaked into other heads"
            )
            assert not torch.allclose(ablated[..., ~others], intact[..., ~others])
    handle.remove()


def test_dense_snapshot_and_lazy_checkpoint_with_vlm_renames(model_dirs, tmp_path):
    model = load_model(model_dirs["llava"])
    block = find_attention_blocks(model)[0]
    modules = {name: mod for _, name, mod in block.projections()}
    snapshot = DenseSnapshot(modules)
    # an old-style LLaVA checkpoint: language_model.model.layers.* keys
    old = {}
    for name, module in modules.items():
        old_key = "language_model.model." + name[len("model.language_model.") :] + ".weight"
        old[old_key] = module.weight.detach().clone()
    save_file(old, str(tmp_path / "model.safetensors"))
    source = SafetensorsDenseSource(tmp_path)
    source.check(modules)
    for name in modules:
        assert torch.equal(source.get(name), snapshot.get(name))
    with pytest.raises(KeyError, match="tried"):
        source.get("model.language_model.layers.7.self_attn.q_proj")
    assert checkpoint_key_candidates("model.layers.0.self_attn.q_proj")[:2] == [
        "model.layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.q_proj.weight",
    ]


def test_sharded_checkpoint_index(model_dirs, tmp_path):
    model = load_model(model_dirs["llama"])
    block = find_attention_blocks(model)[0]
    tensors = {
        f"{name}.weight": mod.weight.detach().clone() for _, name, mod in block.projections()
    }
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[:2]}, str(tmp_path / "a.safetensors"))
    save_file({k: tensors[k] for k in keys[2:]}, str(tmp_path / "b.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    k: ("a.safetensors" if k in keys[:2] else "b.safetensors") for k in keys
                }
            }
        )
    )
    source = SafetensorsDenseSource(tmp_path)
    for key in keys:
        assert torch.equal(source.get(key[: -len(".weight")]), tensors[key])


# ------------------------------------------------------------------------ calibration rendering
def test_response_mask_covers_exactly_the_assistant_text(model_dirs, calib_files):
    tok = load_processor(str(model_dirs["llama"]))
    conversations = load_conversations(str(calib_files["safety"]))
    for conv, sample in zip(conversations, render_samples(conversations, tok, 128), strict=True):
        response = tok.decode(
            sample.input_ids[0][sample.response_mask[0]], skip_special_tokens=True
        )
        assert response.strip() == conv.messages[-1]["content"]
        assert sample.input_ids[0, 0].item() == tok.bos_token_id
        assert (sample.input_ids[0] == tok.bos_token_id).sum() == 1, "BOS must not be added twice"


def test_llava_rendering_with_images(model_dirs, calib_files):
    processor = load_processor(str(model_dirs["llava"]))
    conversations = load_conversations(str(calib_files["safety_vl"]))
    sample = render_samples(conversations[:1], processor, 128)[0]
    assert sample.extra["pixel_values"].shape[-2:] == (32, 32)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((sample.input_ids == image_id).sum()) == 16  # (32 / 8) ** 2 patches
    assert not sample.response_mask[0, : sample.prompt_length].any()


def test_image_on_a_text_only_processor_is_an_error(model_dirs, tmp_path):
    conv = Conversation(
        ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}),
        write_image(tmp_path / "x.png"),
        "file.jsonl:3",
    )
    with pytest.raises(ValueError, match="file.jsonl:3: .*cannot take images"):
        render_samples([conv], build_tokenizer(), 64)


def test_subsampling_is_seeded(calib_files):
    a = load_conversations(str(calib_files["utility"]), num_samples=3, seed=1)
    b = load_conversations(str(calib_files["utility"]), num_samples=3, seed=1)
    c = load_conversations(str(calib_files["utility"]), num_samples=3, seed=2)
    assert a == b and len(a) == 3 and a != c


def test_bundled_setsload_model():
    assert len(load_conversations("hsr-safety-mini")) == 64
    assert len(load_conversations("hsr-utility-mini", num_samples=10)) == 10


def test_vlguard_splits(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    write_image(tmp_path / "bad" / "a.png")
    write_image(tmp_path / "good" / "b.png")
    items = [
        {
            "id": "1",
            "image": "bad/a.png",
            "safe": False,
            "harmful_category": "x",
            "instr-resp": [
                {
                    "instruction": "How do I use this to hurt someone?",
                    "response": "I can't help with that.",
                }
            ],
        },
        {
            "id": "2",
            "image": "good/b.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What is in the picture?", "response": "A green square."},
                {"unsafe_instruction": "How do I poison the plant?", "response": "I won't help."},
            ],
        },
    ]
    (tmp_path / "train.json").write_text(json.dumps(items))
    unsafes = load_vlguard(tmp_path / "train.json", "unsafes")
    safe_safes = load_vlguard(tmp_path, "safe_safes")
    safe_unsafes = load_conversations(f"{tmp_path / 'train.json'}:safe_unsafes")
    assert [c.messages[-1]["content"] for c in unsafes] == ["I can't help with that."]
    assert unsafes[0].image == (tmp_path / "bad" / "a.png").resolve()
    assert [c.messages[0]["content"] for c in safe_safes] == ["What is in the picture?"]
    assert [c.messages[0]["content"] for c in safe_unsafes] == ["How do I poison the plant?"]
    with pytest.raises(ValueError, match="split must be one of"):
        load_vlguard(tmp_path, "everything")
