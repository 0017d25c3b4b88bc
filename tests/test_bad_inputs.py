"""Bad input fails fast, before any long work, with a message that says what to do."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import hsr_plugin  # noqa: F401
from hsr_plugin import HSRModifier
from hsr_plugin.architecture import UnsupportedArchitectureError, find_attention_blocks
from tests.helpers import FP8, HSR, WANDA, hsr_recipe, run_oneshot

_VALUE = "HSRModifier: {}: Value error, {}"
_INPUT = "HSRModifier: {}: Input should be {}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"utility_top": 0.8, "utility_max": 0.7},
            _VALUE.format(
                "value_error",
                "utility_top (p=0.8) must not exceed utility_max (p_max=0.7): candidates are "
                "(top_q safety ∩ top_pmax utility) minus top_p utility",
            ),
        ),
        ({"num_heads": 0}, _INPUT.format("num_heads", "greater than or equal to 1")),
        (
            {"head_score": "ships_magic"},
            _INPUT.format(
                "head_score", "'ships_subspace', 'ships_kl', 'reference' or 'attribution'"
            ),
        ),
        (
            {"neuron_score": "gradient"},
            _INPUT.format("neuron_score", "'wanda', 'sparsegpt', 'snip' or 'restore_gain'"),
        ),
        ({"safety_top": 0.0}, _INPUT.format("safety_top", "greater than 0")),
        ({"head_slicing": "rows"}, _INPUT.format("head_slicing", "'exact' or 'reference'")),
        (
            {"preserve_nm": "2-4"},
            _VALUE.format("preserve_nm", "preserve_nm must look like '2:4', got '2-4'"),
        ),
        (
            {"preserve_nm": "5:4"},
            _VALUE.format("preserve_nm", "preserve_nm '5:4': need 0 < N <= M"),
        ),
        ({"ablation_eps": 2.0}, _INPUT.format("ablation_eps", "less than 1")),
        (
            {"safety_data": "  "},
            _VALUE.format(
                "safety_data", "calibration data must name a bundled set, a path or a dataset id"
            ),
        ),
        (
            {"utility_data": ""},
            _VALUE.format(
                "utility_data", "calibration data must name a bundled set, a path or a dataset id"
            ),
        ),
        ({"unknown_field": 1}, "HSRModifier: unknown_field: Extra inputs are not permitted"),
    ],
)
def test_bad_hyperparameters_are_rejected_by_the_config(kwargs, message):
    from hsr_plugin.cli.errors import one_line

    with pytest.raises(ValidationError) as err:
        HSRModifier(**kwargs)
    assert one_line(err.value) == message


def test_no_pruning_stage_before_hsr(model_dirs, calib_files):
    with pytest.raises(
        ValueError, match="needs a pruning modifier before it.*after the sparsity stage"
    ):
        run_oneshot(
            model_dirs["llama"], hsr_recipe(calib_files, prune=False), calib_files["utility"]
        )


def test_quantization_before_hsr(model_dirs, calib_files):
    recipe = (
        WANDA.format(structure="0:0")
        + FP8
        + HSR.format(
            num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )
    )
    with pytest.raises(ValueError, match="BEFORE quantization"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_missing_dense_source(model_dirs, calib_files, tmp_path):
    recipe = hsr_recipe(calib_files, extra=f"      dense_model: {tmp_path / 'nowhere'}\n")
    with pytest.raises(FileNotFoundError, match="dense_model .*nowhere does not exist"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_dense_source_with_inconsistent_shapes(model_dirs, calib_files, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "other-model"
    folder.mkdir()
    weights = load_file(str(model_dirs["llama"] / "model.safetensors"))
    weights["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 8)
    save_file(weights, str(folder / "model.safetensors"))
    recipe = hsr_recipe(calib_files, extra=f"      dense_model: {folder}\n")
    with pytest.raises(ValueError, match=r"has shape \(8, 8\).*is it the same model"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_empty_calibration_data(model_dirs, calib_files, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=empty, utility=calib_files["utility"], extra=""
    )
    with pytest.raises(ValueError, match="is empty"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_bad_calibration_row_names_file_and_line(model_dirs, calib_files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=bad, utility=calib_files["utility"], extra=""
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:1: the last turn must be the assistant"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_unknown_dataset_offline(model_dirs, calib_files):
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety="nobody/no-such-dataset", utility=calib_files["utility"], extra=""
    )
    with pytest.raises(
        ValueError, match="not a bundled set .*hsr-safety-mini.*not an existing local path"
    ):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_too_many_heads(model_dirs, calib_files):
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=99, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
    )
    with pytest.raises(ValueError, match="num_heads=99 exceeds the 8 heads"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


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


def test_hsr_refuses_to_restore_before_pruning_has_ended():
    """The guard: restoring while a pruning modifier before HSR is still running is an error."""
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    from hsr_plugin.recipe_checks import require_pruning_ended

    wanda = WandaPruningModifier(sparsity=0.5)
    assert not wanda.ended_
    with pytest.raises(RuntimeError) as err:
        require_pruning_ended([wanda])
    assert str(err.value) == (
        "HSRModifier would restore weights before WandaPruningModifier has finished pruning. Put "
        "HSR after the sparsity stage and before quantization, and run oneshot with the default "
        "pipeline ('independent')."
    )


@pytest.mark.parametrize(
    ("field", "value", "settings", "mode"),
    [
        ("subspace_rank", 2, {"head_score": "ships_kl"}, "head_score: ships_subspace"),
        (
            "ablation_eps",
            1e-3,
            {"head_score": "attribution"},
            "an ablating head score (ships_subspace, ships_kl, reference)",
        ),
        ("safety_top", 0.4, {"neuron_score": "restore_gain"}, "the paper's neuron level"),
        ("utility_top", 0.4, {"neuron_score": "restore_gain"}, "the paper's neuron level"),
        ("utility_max", 0.8, {"neuron_score": "restore_gain"}, "the paper's neuron level"),
        ("utility_tolerance", 0.1, {}, "neuron_score: restore_gain"),
        ("num_mlp_channels", 8, {}, "units: [heads, mlp]"),
    ],
)
def test_a_field_the_chosen_mode_ignores_is_refused_naming_the_mode(field, value, settings, mode):
    with pytest.raises(ValidationError) as err:
        HSRModifier(**settings, **{field: value})
    assert f"{field}={value!r} has no effect here: only {mode} uses it" in str(err.value)
    HSRModifier(**settings)  # the mode alone is fine, and so is the field in its own mode
