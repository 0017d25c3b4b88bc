"""HSRModifier end to end under llm-compressor's oneshot, on tiny models built from configs.

Every run is compared with the same recipe WITHOUT HSR (same data, same seeds): pruning is
deterministic, so the pruned reference is exact. Checks: restored positions were zero after
pruning and now hold the dense value exactly; everything else is bit-identical to the pruned
model; vision towers and MLPs are untouched; restorations lie in the selected heads' slices; the
report's counts equal the counts measured on the tensors."""

from __future__ import annotations

import json

import pytest
import torch

import hsr_plugin  # noqa: F401  registers HSRModifier
from hsr_plugin import HSRModifier
from hsr_plugin.oneshot_data import conversation_dataset, single_sample_collator
from hsr_plugin.slicing import union_head_slices
from tests.helpers import FP8, HSR, SPARSEGPT, WANDA, folder_digest, load_model, run_oneshot


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hsr_modifier(model) -> HSRModifier:
    from llmcompressor.core import active_session

    mods = [m for m in active_session().lifecycle.recipe.modifiers if isinstance(m, HSRModifier)]
    assert len(mods) == 1
    return mods[0]


def _run_pair(model_dir, prune_yaml, calib, num_heads=2, extra="", vl=False, suffix=""):
    safety = calib["safety_vl" if vl else "safety"]
    utility = calib["utility_vl" if vl else "utility"]
    dense = _weights(load_model(model_dir))
    pruned = _weights(run_oneshot(model_dir, prune_yaml, calib["utility"]))
    hsr_yaml = (
        prune_yaml
        + HSR.format(num_heads=num_heads, safety=safety, utility=utility, extra=extra)
        + suffix
    )
    model = run_oneshot(model_dir, hsr_yaml, calib["utility"])
    report = _hsr_modifier(model).report
    return dense, pruned, _weights(model), report


def _attention_keys(weights: dict) -> list[str]:
    return [
        k
        for k in weights
        if any(
            p in k for p in (".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".o_proj.weight")
        )
        and "vision" not in k
        and "visual" not in k
    ]


def _check_restoration(dense, pruned, final, report, config, mode="exact"):
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    selected = [tuple(x) for x in report["selected_heads"]]
    by_layer: dict[int, list] = {}
    kv_of = {(h["layer"], h["head"]): h["kv_group"] for h in report["heads"]}
    for layer, head in selected:
        by_layer.setdefault(layer, []).append((head, kv_of[(layer, head)]))
    rows = {r["module"]: r for r in report["restored"]}
    total = 0
    for key in final:
        changed = final[key] != pruned[key]
        if key not in _attention_keys(final):
            assert not changed.any(), f"{key} changed but HSR must only touch attention projections"
            continue
        # every changed position: zero after pruning, dense value now (exactly)
        assert (pruned[key][changed] == 0).all(), key
        assert torch.equal(final[key][changed], dense[key][changed]), key
        assert (dense[key][changed] != 0).all(), key
        module = key[: -len(".weight")]
        layer = int(module.split("layers.")[1].split(".")[0])
        if changed.any():
            assert layer in by_layer, f"{key} restored in a layer without a selected head"
            short = module.rsplit(".", 1)[-1][0]
            slices = union_head_slices(
                tuple(final[key].shape), short, by_layer[layer], head_dim, heads, mode
            )
            assert not (changed & ~slices).any(), (
                f"{key}: restoration outside the selected heads' slices"
            )
        hsr_name = next(
            (name for name in rows if name.endswith(module.split("model.", 1)[-1])), None
        )
        if hsr_name is not None:
            assert rows[hsr_name]["restored"] == int(changed.sum()), key
            assert rows[hsr_name]["restored"] <= rows[hsr_name]["pruned_in_slice"]
        else:
            assert not changed.any()
        total += int(changed.sum())
    assert report["totals"]["restored"] == total
    return total


def test_llama_wanda_unstructured_restores_exact_dense_values(model_dirs, calib_files, capsys):
    before = folder_digest(model_dirs["llama"])
    dense, pruned, final, report = _run_pair(
        model_dirs["llama"], WANDA.format(structure="0:0"), calib_files
    )
    config = load_model(model_dirs["llama"]).config
    restored = _check_restoration(dense, pruned, final, report, config)
    assert restored > 0
    assert len(report["heads"]) == 2 * 4 and len(report["selected_heads"]) == 2
    phases = ["data", "head_scoring", "neuron_scoring", "dense_snapshot", "restore"]
    assert list(report["timing_s"]) == phases
    # 2 layers x 4 heads: 1 intact pass + 4 heads over 2 layers + 4 over 1, in full passes
    equivalents = report["scoring"]["head_scoring_forward_equivalents"]
    assert equivalents == 7.0 and isinstance(equivalents, float)
    bars = capsys.readouterr().err  # each pass of HSR shows what it is doing
    for label in ("HSR head scores (ships_subspace)", "HSR safety importance (wanda)",
                  "HSR utility importance (wanda)"):  # fmt: skip
        assert label in bars, label
    scores = [h["score"] for h in report["heads"]]
    assert scores == sorted(scores, reverse=True)
    assert report["schema_version"] == 1 and report["config"]["num_heads"] == 2
    totals = report["totals"]
    assert totals["pruned_params"] == sum(
        int((pruned[k] == 0).sum()) for k in pruned if k.endswith("proj.weight") and "layers." in k
    )
    assert totals["restored_per_10k_params"] == pytest.approx(
        1e4 * restored / totals["language_params"]
    )
    assert folder_digest(model_dirs["llama"]) == before, (
        "the input checkpoint must never be modified"
    )


@pytest.mark.parametrize("structure", ["0:0", "2:4"])
def test_llama_sparsegpt(model_dirs, calib_files, structure):
    dense, pruned, final, report = _run_pair(
        model_dirs["llama"], SPARSEGPT.format(structure=structure), calib_files
    )
    assert (
        _check_restoration(dense, pruned, final, report, load_model(model_dirs["llama"]).config) > 0
    )
    assert any("OBS" in note for note in report["notes"])


def test_preserve_nm_keeps_the_2_of_4_pattern(model_dirs, calib_files):
    dense, pruned, final, report = _run_pair(
        model_dirs["llama"],
        WANDA.format(structure="2:4"),
        calib_files,
        extra="      preserve_nm: '2:4'\n",
    )
    _check_restoration(dense, pruned, final, report, load_model(model_dirs["llama"]).config)
    for key in _attention_keys(final):
        groups = (final[key] != 0).reshape(final[key].shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all(), f"{key} breaks 2:4"


def test_qwen2_with_qkv_bias(model_dirs, calib_files):
    dense, pruned, final, report = _run_pair(
        model_dirs["qwen2"], WANDA.format(structure="0:0"), calib_files
    )
    assert (
        _check_restoration(dense, pruned, final, report, load_model(model_dirs["qwen2"]).config) > 0
    )
    for key in final:
        if key.endswith(".bias"):
            assert torch.equal(final[key], pruned[key])


def test_llava_with_images_leaves_the_vision_tower_alone(model_dirs, calib_files):
    dense, pruned, final, report = _run_pair(
        model_dirs["llava"], WANDA.format(structure="0:0"), calib_files, vl=True
    )
    assert (
        _check_restoration(dense, pruned, final, report, load_model(model_dirs["llava"]).config) > 0
    )
    vision = [k for k in final if "vision_tower" in k or "multi_modal_projector" in k]
    assert vision
    for key in vision:
        assert torch.equal(final[key], dense[key]), key
    assert all("language_model" in r["module"] for r in report["restored"])


def test_qwen2_vl_language_model(model_dirs, calib_files):
    dense, pruned, final, report = _run_pair(
        model_dirs["qwen2_vl"], WANDA.format(structure="0:0"), calib_files
    )
    assert (
        _check_restoration(dense, pruned, final, report, load_model(model_dirs["qwen2_vl"]).config)
        > 0
    )
    for key in (k for k in final if "visual" in k):
        assert torch.equal(final[key], dense[key]), key


def test_qwen2_vl_with_pictures_through_its_own_processor(model_dirs, calib_files):
    """Qwen2-VL's processor returns mm_token_type_ids sized to the whole conversation; head
    scoring runs on the prompt, so every per-token field must be cut with it."""
    from transformers import Qwen2VLProcessor

    from hsr_plugin.calibration import load_processor

    model_dir = model_dirs["qwen2_vl_processor"]
    assert type(load_processor(str(model_dir))) is Qwen2VLProcessor  # reloaded by path
    dense, pruned, final, report = _run_pair(
        model_dir, WANDA.format(structure="0:0"), calib_files, vl=True
    )
    assert _check_restoration(dense, pruned, final, report, load_model(model_dir).config) > 0
    for key in (k for k in final if "visual" in k):
        assert torch.equal(final[key], dense[key]), key


def test_same_seed_gives_bit_identical_weights(model_dirs, calib_files):
    """4 of 6 rows are drawn, so the seed matters: same seed, same bits; another seed, other
    restored weights."""

    def recipe(seed: int) -> str:
        extra = f"      head_score: ships_kl\n      num_samples: 4\n      seed: {seed}\n"
        return WANDA.format(structure="0:0") + HSR.format(
            num_heads=3, safety=calib_files["safety"], utility=calib_files["utility"], extra=extra
        )

    first = _weights(run_oneshot(model_dirs["llama"], recipe(0), calib_files["utility"]))
    second = _weights(run_oneshot(model_dirs["llama"], recipe(0), calib_files["utility"]))
    other = _weights(run_oneshot(model_dirs["llama"], recipe(1), calib_files["utility"]))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first), "the seed was ignored"


def test_reference_mode_restores_inside_reference_slices(model_dirs, calib_files):
    extra = "      head_score: reference\n      head_slicing: reference\n"
    dense, pruned, final, report = _run_pair(
        model_dirs["llama"], WANDA.format(structure="0:0"), calib_files, extra=extra
    )
    _check_restoration(
        dense, pruned, final, report, load_model(model_dirs["llama"]).config, mode="reference"
    )
    assert len(report["heads"]) == 2 * 2, "reference scores one unit per KV group"


@pytest.mark.parametrize("neuron_score", ["sparsegpt", "snip"])
def test_other_neuron_scores(model_dirs, calib_files, neuron_score):
    extra = f"      neuron_score: {neuron_score}\n"
    dense, pruned, final, report = _run_pair(
        model_dirs["llama"], WANDA.format(structure="0:0"), calib_files, extra=extra
    )
    assert (
        _check_restoration(dense, pruned, final, report, load_model(model_dirs["llama"]).config) > 0
    )


def test_prune_hsr_then_fp8_quantization(model_dirs, calib_files, tmp_path):
    recipe = (
        SPARSEGPT.format(structure="0:0")
        + HSR.format(
            num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )
        + FP8
    )
    run_oneshot(
        model_dirs["llama"], recipe, calib_files["utility"], output_dir=str(tmp_path / "out")
    )
    report = _hsr_modifier(None).report
    assert report["totals"]["restored"] > 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["format"] == "float-quantized" and quant["quant_method"] == "compressed-tensors"
    assert quant["sparsity_config"] == {}, "vLLM rejects any sparsity_config with targets"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        restored = report["restored"][0]["module"]
        assert handle.get_tensor(f"{restored}.weight").dtype == torch.float8_e4m3fn


def test_yaml_recipe_file_with_report_path(model_dirs, calib_files, tmp_path):
    """The README's recipe-file use: a recipe file, `import hsr_plugin`, oneshot with output_dir."""
    from llmcompressor import oneshot

    recipe = tmp_path / "wanda_hsr.yaml"
    recipe.write_text(
        WANDA.format(structure="0:0")
        + HSR.format(
            num_heads=2,
            safety=calib_files["safety"],
            utility=calib_files["utility"],
            extra=f"      report_path: {tmp_path / 'report.json'}\n",
        )
    )
    from hsr_plugin.calibration import load_processor

    dataset = conversation_dataset(
        str(calib_files["utility"]), load_processor(str(model_dirs["llama"])), None, 128
    )
    oneshot(
        model=str(model_dirs["llama"]),
        recipe=str(recipe),
        dataset=dataset,
        data_collator=single_sample_collator,
        num_calibration_samples=len(dataset),
        output_dir=str(tmp_path / "out"),
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["restored"] > 0
    assert (tmp_path / "out" / "recipe.yaml").read_text().count("HSRModifier") == 1


@pytest.mark.parametrize(
    "extra",
    [
        "      ignore: ['re:.*lm_head', 're:.*layers\\.0\\.self_attn.*']\n",
        "      ignore: ['re:.*lm_head', 're:.*layers\\.0$']\n",  # the whole decoder layer
        "      targets: ['re:.*layers\\.1$']\n",  # only layer 1 is targeted
    ],
    ids=["ignore-attention", "ignore-layer", "target-layer"],
)
def test_ignore_excludes_attention_blocks(model_dirs, calib_files, extra):
    dense, pruned, final, report = _run_pair(
        model_dirs["llama"], WANDA.format(structure="0:0"), calib_files, extra=extra
    )
    assert {h["layer"] for h in report["heads"]} == {1}
    assert all("layers.0." not in row["module"] for row in report["restored"])
    for key in final:
        if "layers.0." in key:
            assert torch.equal(final[key], pruned[key]), key


def test_sequential_pipeline_restores_after_pruning(model_dirs, calib_files):
    """With pipeline='sequential' every modifier shares one pass; HSR still restores only after
    pruning ended."""
    prune = WANDA.format(structure="0:0")
    dense = _weights(load_model(model_dirs["llama"]))
    pruned = _weights(
        run_oneshot(model_dirs["llama"], prune, calib_files["utility"], pipeline="sequential")
    )
    recipe = prune + HSR.format(
        num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
    )
    final = _weights(
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"], pipeline="sequential")
    )
    report = _hsr_modifier(None).report
    assert (
        _check_restoration(dense, pruned, final, report, load_model(model_dirs["llama"]).config) > 0
    )


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "      head_score: ships_kl\n",
        "      head_score: attribution\n",
        "      head_score: reference\n      head_slicing: reference\n",
        "      neuron_score: snip\n",
        "      neuron_score: sparsegpt\n",
        "      neuron_score: restore_gain\n      max_restored_per_10k: 50\n",
        "      units: [heads, mlp]\n      num_mlp_channels: 4\n",
    ],
    ids=["ships", "ships_kl", "attribution", "reference", "snip", "sparsegpt", "restore_gain",
         "mlp"],
)  # fmt: skip
def test_the_picture_reaches_every_scoring_pass(model_dirs, calib_files, extra):
    """Every forward pass HSR runs on a LLaVA, in every mode, carries the calibration rows'
    pictures, and the vision tower encodes them: head scores, weight statistics and gradients
    are all picture-conditioned."""
    calls, encoded = [], []

    def prepare(model):
        def record(_module, _args, kwargs):
            calls.append(kwargs.get("pixel_values") is not None)

        model.register_forward_pre_hook(record, with_kwargs=True)
        model.model.vision_tower.register_forward_hook(lambda *_: encoded.append(1))

    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=calib_files["safety_vl"], utility=calib_files["utility_vl"], extra=extra
    )
    model = run_oneshot(model_dirs["llava"], recipe, calib_files["utility"], prepare=prepare)
    assert _hsr_modifier(model).report["totals"]["restored"] >= 0
    assert calls and all(calls), f"{calls.count(False)} of {len(calls)} passes had no picture"
    assert len(encoded) >= len(calls)
