"""Model families end to end, each from its own transformers config class (and processor), and
the layouts and final factors that make them differ: partial targets and skipped layers, Granite
and Cohere logit factors, Phi-3's fused qkv_proj, DeepSeek's multi-head latent attention.

The end-to-end checks are `integration.bench.families.probe`, which the support matrix runs too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hsr_plugin.architecture import find_attention_blocks
from hsr_plugin.calibration import load_processor, render_samples
from hsr_plugin.conversations import load_conversations
from hsr_plugin.decoder_stack import find_decoder_stack
from hsr_plugin.exact_head_scores import score_heads
from integration.bench.families import FAMILIES, calibration_files, probe
from integration.bench.naive_attribution import naive_head_scores
from tests.helpers import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> dict[str, Path]:
    return calibration_files(tmp_path_factory.mktemp("family-data"))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = FAMILIES[name].build(root / name.replace(" ", "_"))
        return built[name]

    return get


def _assert_cached_equals_naive(model, blocks, samples, pad: int, method: str) -> None:
    naive = naive_head_scores(model, blocks, samples, method, batch_size=3, pad_id=pad)
    cached = score_heads(model, blocks, samples, method, batch_size=3, pad_id=pad,
                         progress=False)  # fmt: skip
    assert [(s.layer, s.head) for s in cached] == [(s.layer, s.head) for s in naive]
    torch.testing.assert_close(
        torch.tensor([s.score for s in cached], dtype=torch.float64),
        torch.tensor([s.score for s in naive], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-9,
    )


def _samples(model_dir: Path, data: Path, rows: int = 6):
    processor = load_processor(str(model_dir))
    samples = render_samples(load_conversations(str(data), rows, 0), processor, 128)
    return samples, getattr(processor, "tokenizer", processor).pad_token_id or 0


def _phi3_and_its_split_llama(root: Path) -> tuple[Path, Path]:
    """A Phi-3 and a Llama with the same weights, qkv_proj split by rows into q/k/v and
    gate_up_proj into gate/up: the same function, separate projections."""
    import transformers

    from integration.bench.tiny_models import build_tokenizer, save_tiny, tiny_text_kwargs

    tok = build_tokenizer()
    kwargs = tiny_text_kwargs(tok, rms_norm_eps=1e-5)
    kwargs.pop("head_dim")
    torch.manual_seed(0)
    phi = transformers.Phi3ForCausalLM(transformers.Phi3Config(**kwargs)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs, head_dim=16)).eval()
    state = {}
    q_rows, kv_rows = 4 * 16, 2 * 16
    for key, value in phi.state_dict().items():
        if key.endswith("qkv_proj.weight"):
            q, k, v = value.split([q_rows, kv_rows, kv_rows])
            base = key[: -len("qkv_proj.weight")]
            state |= {f"{base}q_proj.weight": q, f"{base}k_proj.weight": k,
                      f"{base}v_proj.weight": v}  # fmt: skip
        elif key.endswith("gate_up_proj.weight"):
            gate, up = value.chunk(2)
            base = key[: -len("gate_up_proj.weight")]
            state |= {f"{base}gate_proj.weight": gate, f"{base}up_proj.weight": up}
        else:
            state[key] = value
    llama.load_state_dict(state, strict=True)
    return save_tiny(phi, tok, root / "phi3"), save_tiny(llama, tok, root / "phi3-split")


PICTURE_FAMILIES = [name for name, family in FAMILIES.items() if family.pictures]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_restores_exact_dense_values_in_the_selected_heads(
    name, family_dirs, family_data
):
    family = FAMILIES[name]
    result = probe(family_dirs(name), family_data, "text", family.prune_ignore)
    assert result["restored"] > 0
    assert len(result["selected_heads"]) == 2


@pytest.mark.parametrize("mode", ["pictures", "pictures as content parts"])
@pytest.mark.parametrize("name", [name for name, family in FAMILIES.items() if family.pictures])
def test_every_vlm_family_restores_exact_dense_values_with_pictures(
    name, mode, family_dirs, family_data
):
    """Each VLM family through its own processor, saved and reloaded by path, with a picture in
    every calibration row: in the row's `image` field, and as Hugging Face content parts."""
    result = probe(family_dirs(name), family_data, mode, FAMILIES[name].prune_ignore)
    assert result["restored"] > 0


@pytest.mark.parametrize(
    "name, mode",
    [
        ("Phi-3", "restore_gain"),
        ("Phi-3", "sparsegpt scores"),
        ("Phi-3", "snip scores"),
        ("DeepSeek-V3 (MLA)", "snip scores"),
        ("Phi-3", "first-order heads"),
        ("Phi-3", "N:M 2:4"),
        ("DeepSeek-V3 (MLA)", "restore_gain"),
        ("DeepSeek-V3 (MLA)", "first-order heads"),
        ("Granite", "exact heads (ships_kl)"),
        ("Mllama", "mlp"),
    ],
)
def test_family_settings_end_to_end(name, mode, family_dirs, family_data):
    probe(family_dirs(name), family_data, mode, FAMILIES[name].prune_ignore)


def test_the_support_matrix_bench_writes_its_table_for_a_subset(tmp_path):
    from integration.bench import support_matrix

    out = tmp_path / "SUPPORT.md"
    assert support_matrix.main(["--families", "Llama,Phi-3", "--no-docs", "--out", str(out)]) == 0
    table = out.read_text()
    llama = next(line for line in table.splitlines() if line.startswith("| Llama |"))
    assert llama.count("✓") == 8 and "– text-only family" in llama, llama
    phi = next(line for line in table.splitlines() if line.startswith("| Phi-3 |"))
    assert phi.count("✓") == 7 and "✗ refused: no gated MLP" in phi, phi


def test_the_documented_support_matrix_is_the_benchmark_s_output():
    from integration.bench.support_matrix import BEGIN, END, FAMILIES_DOC

    doc = FAMILIES_DOC.read_text()
    table = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    written = (REPO / "integration" / "bench" / "SUPPORT.md").read_text()
    assert table and table in written, f"{FAMILIES_DOC.name} differs: run make support-matrix"
    for name in FAMILIES:
        assert f"| {name} |" in table, name


@pytest.mark.parametrize(
    "within",
    [["model.layers.0"], ["model.layers.0", "model.layers.2"], ["model.layers.1"]],
    ids=["layer-0-only", "middle-layer-skipped", "middle-only"],
)
@pytest.mark.parametrize("method", ["ships_kl", "ships_subspace"])
def test_partial_targets_give_the_naive_loop_s_scores(within, method, family_dirs, family_data):
    """The cached tail re-runs every layer after a scored one, scored or not."""
    import transformers

    from integration.bench.tiny_models import build_tokenizer, save_tiny, tiny_text_kwargs

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**tiny_text_kwargs(tok, num_hidden_layers=3))
    model_dir = save_tiny(transformers.LlamaForCausalLM(config), tok, family_data["safety"].parent
                      / "llama3")  # fmt: skip
    model = load_model(model_dir)
    samples, pad = _samples(model_dir, family_data["safety"])
    blocks = find_attention_blocks(model, within=within)
    _assert_cached_equals_naive(model, blocks, samples, pad, method)


@pytest.mark.parametrize("name", ["Mllama", "Granite", "Cohere", "DeepSeek-V3 (MLA)", "Phi-3"])
def test_cached_scores_equal_the_naive_loop_across_families(name, family_dirs, family_data):
    """Mllama's cross-attention layer (skipped without a picture), Granite's and Cohere's
    final logit factors, MLA and fused QKV: the cached tail equals full passes."""
    model_dir = family_dirs(name)
    model = load_model(model_dir)
    samples, pad = _samples(model_dir, family_data["safety"])
    blocks = find_attention_blocks(model)
    for method in ("ships_kl", "ships_subspace"):
        _assert_cached_equals_naive(model, blocks, samples, pad, method)


@pytest.mark.parametrize("name, factor", [("Granite", 1 / 4.0), ("Cohere", 0.25), ("Gemma2", 1.0)])
def test_the_decoder_tail_reproduces_the_logits_with_the_family_s_final_factor(
    name, factor, family_dirs, family_data
):
    from hsr_plugin.calibration import prompt_batches

    model_dir = family_dirs(name)
    model = load_model(model_dir)
    samples, pad = _samples(model_dir, family_data["safety"], rows=3)
    stack = find_decoder_stack(model, find_attention_blocks(model))
    assert stack.logit_factor == pytest.approx(factor)
    batch = next(prompt_batches(samples, 3, pad, positions=True))
    with torch.no_grad():
        out = model(**batch, use_cache=False, output_hidden_states=True)
        last = []
        handle = stack.layers[-1].register_forward_hook(lambda _m, _a, o: last.append(o))
        try:
            model(**batch, use_cache=False)
        finally:
            handle.remove()
        hidden = last[0][0] if isinstance(last[0], tuple) else last[0]
        logits, _ = stack.final_states(hidden)
    torch.testing.assert_close(logits, out.logits[:, -1].float(), rtol=1e-4, atol=1e-5)


def test_a_multiplying_logits_scaling_is_read_the_right_way(family_data):
    """`logits_scaling` divides in Granite and multiplies in HyperCLOVA X (MuP): the tail check
    keeps the reading that reproduces the model's logits."""
    from integration.bench.families import causal_builder

    model_dir = causal_builder("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", logits_scaling=4.0)(
        family_data["safety"].parent / "hyperclovax"
    )
    model = load_model(model_dir)
    samples, pad = _samples(model_dir, family_data["safety"])
    blocks = find_attention_blocks(model)
    _assert_cached_equals_naive(model, blocks, samples, pad, "ships_kl")


def test_fused_qkv_restores_what_separate_projections_restore(tmp_path, family_data):
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier
    from hsr_plugin.oneshot_data import calibration_kwargs
    from tests.helpers import HSR, WANDA

    phi_dir, llama_dir = _phi3_and_its_split_llama(tmp_path)
    phi, llama = load_model(phi_dir), load_model(llama_dir)
    samples, pad = _samples(phi_dir, family_data["safety"])
    with torch.no_grad():
        ids = samples[0].prompt_inputs()
        torch.testing.assert_close(phi(**ids).logits, llama(**ids).logits, rtol=1e-5, atol=1e-5)
    for method in ("ships_kl", "ships_subspace", "reference", "attribution"):
        fused = score_heads(phi, find_attention_blocks(phi), samples, method, batch_size=3,
                            pad_id=pad, progress=False)  # fmt: skip
        split = score_heads(llama, find_attention_blocks(llama), samples, method, batch_size=3,
                            pad_id=pad, progress=False)  # fmt: skip
        assert [(s.layer, s.head) for s in fused] == [(s.layer, s.head) for s in split]
        torch.testing.assert_close(
            torch.tensor([s.score for s in fused]), torch.tensor([s.score for s in split]),
            rtol=1e-3, atol=1e-6,
        )  # fmt: skip

    def restored(model_dir: Path, slicing: str) -> dict[str, torch.Tensor]:
        processor = load_processor(str(model_dir))
        model = load_model(model_dir)
        recipe = WANDA.format(structure="0:0") + HSR.format(
            num_heads=2, safety=family_data["safety"], utility=family_data["utility"],
            extra=f"      head_slicing: {slicing}\n      head_score: ships_kl\n",
        )  # fmt: skip
        # the basic pipeline: llm-compressor's sequential one hands Phi-3's layers no attention
        # mask, and their o_proj inputs then differ from those of a plain forward pass
        calibration = calibration_kwargs(str(family_data["utility"]), processor, None, 128)
        oneshot(model=model, processor=processor, recipe=recipe, max_seq_length=128,
                shuffle_calibration_samples=False, pipeline="basic", **calibration)  # fmt: skip
        mods = active_session().lifecycle.recipe.modifiers
        report = next(m for m in mods if isinstance(m, HSRModifier)).report
        return report, {k: v.detach().clone() for k, v in model.state_dict().items()}

    for slicing in ("exact", "reference"):
        phi_report, phi_weights = restored(phi_dir, slicing)
        llama_report, llama_weights = restored(llama_dir, slicing)
        assert phi_report["selected_heads"] == llama_report["selected_heads"]
        assert phi_report["totals"]["restored"] == llama_report["totals"]["restored"] > 0
        for layer in range(2):
            base = f"model.layers.{layer}.self_attn."
            stacked = torch.cat([llama_weights[f"{base}{p}_proj.weight"] for p in "qkv"])
            assert torch.equal(phi_weights[f"{base}qkv_proj.weight"], stacked), (slicing, layer)
            assert torch.equal(phi_weights[f"{base}o_proj.weight"],
                               llama_weights[f"{base}o_proj.weight"])  # fmt: skip


def test_mla_restores_inside_the_head_slices_and_leaves_the_shared_projections(
    family_dirs, family_data
):
    """q_b_proj and kv_b_proj rows and o_proj columns per head; q_a_proj and
    kv_a_proj_with_mqa belong to no head and are listed in the report."""
    model = load_model(family_dirs("DeepSeek-V3 (MLA)"))
    (block, *_) = find_attention_blocks(model)
    assert block.layout == "mla" and block.num_heads == block.num_kv_heads == 4
    shorts = [s.short for s in block.sliced_projections()]
    assert shorts == ["q_b", "kv_b", "o"]
    assert [b.width for s in block.sliced_projections() for b in s.bands] == [16, 24, 16]
    assert block.unsliced == (f"{block.name}.q_a_proj", f"{block.name}.kv_a_proj_with_mqa")
    result = probe(family_dirs("DeepSeek-V3 (MLA)"), family_data, "text",
                   FAMILIES["DeepSeek-V3 (MLA)"].prune_ignore)  # fmt: skip
    assert result["layout"] == "mla"
    assert sorted(u.rsplit(".", 1)[-1] for u in result["unsliced"])[:2] == [
        "kv_a_proj_with_mqa",
        "kv_a_proj_with_mqa",
    ]


@pytest.mark.parametrize("name", ["Qwen3-VL", "Mllama", "Aya Vision", "Gemma3 (VLM)", "LLaVA-NeXT"])
def test_cached_scores_equal_the_naive_loop_with_pictures(name, family_dirs, family_data):
    """Qwen3-VL adds visual features between its first layers (DeepStack), Mllama's
    cross-attention states are per picture tile, Aya Vision and Gemma3's VLM wrappers skip a
    final factor their text config names: the cached tail still equals full passes."""
    model_dir = family_dirs(name)
    model = load_model(model_dir)
    samples, pad = _samples(model_dir, family_data["safety_vl"], rows=3)
    blocks = find_attention_blocks(model)
    _assert_cached_equals_naive(model, blocks, samples, pad, "ships_kl")


@pytest.mark.parametrize("name", PICTURE_FAMILIES)
def test_every_per_token_processor_field_is_cut_with_the_prompt(name, family_dirs, family_data):
    """Whatever a family's processor returns per token (mm_token_type_ids, token_type_ids,
    cross_attention_mask, ...), the prompt inputs hold it at the prompt's length."""
    samples, _pad = _samples(family_dirs(name), family_data["safety_vl"], rows=2)
    for sample in samples:
        full, prompt = sample.model_inputs(), sample.prompt_inputs()
        width = full["input_ids"].shape[1]
        per_token = [k for k, v in full.items() if v.dim() >= 2 and v.shape[1] == width]
        assert "input_ids" in per_token and any(k.startswith("pixel_values") for k in full), name
        for key in per_token:
            assert prompt[key].shape[1] == sample.prompt_length, (name, key)
