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
from integration.bench.tiny_models import TINY_CLIP, build_tokenizer, write_image
from tests.helpers import load_model


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
def test_response_mask_covers_exactly_the_assistant_tokens(model_dirs, calib_files):
    """Pinned on token ids: the mask is True from the first token after the generation prompt
    to the end (the answer and the template's end-of-turn tokens), nowhere else."""
    tok = load_processor(str(model_dirs["llama"]))
    conversations = load_conversations(str(calib_files["safety"]))
    for conv, sample in zip(conversations, render_samples(conversations, tok, 128), strict=True):
        user = [dict(m) for m in conv.messages[:-1]]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([dict(m) for m in conv.messages], tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert sample.input_ids[0].tolist() == full_ids
        positions = sample.response_mask[0].nonzero().flatten().tolist()
        assert positions == list(range(len(prompt_ids), len(full_ids))), "response mask shifted"
        assert sample.prompt_length == len(prompt_ids)
        answer_ids = tok(conv.messages[-1]["content"], add_special_tokens=False)["input_ids"]
        first = sample.input_ids[0, len(prompt_ids) : len(prompt_ids) + len(answer_ids)]
        assert first.tolist() == answer_ids, "the mask must start on the answer's first token"
        assert sample.input_ids[0, 0].item() == tok.bos_token_id
        assert (sample.input_ids[0] == tok.bos_token_id).sum() == 1, "BOS must not be added twice"


def test_left_padded_batches_read_the_same_last_token_as_unpadded_runs(model_dirs, calib_files):
    """Head attribution batches prompts of different lengths with left padding and position ids:
    every prompt's last-token logits and state equal those of the prompt run alone."""
    from hsr_plugin.attribution import last_token_outputs

    model = load_model(model_dirs["llama"]).eval()
    tok = load_processor(str(model_dirs["llama"]))
    samples = render_samples(load_conversations(str(calib_files["safety"])), tok, 128)
    lengths = {s.prompt_length for s in samples}
    assert len(lengths) > 1, "the prompts must differ in length for padding to matter"
    batched = last_token_outputs(model, samples, batch_size=len(samples), pad_id=tok.pad_token_id)
    for i, sample in enumerate(samples):
        with torch.no_grad():
            out = model(
                input_ids=sample.input_ids[:, : sample.prompt_length],
                output_hidden_states=True,
                use_cache=False,
            )
        assert torch.allclose(batched.logits[i], out.logits[0, -1], atol=1e-4), f"prompt {i}"
        assert torch.allclose(batched.states[i], out.hidden_states[-1][0, -1], atol=1e-4)


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
