"""hsr_plugin.dense_source: the dense weights HSR copies back, from a snapshot or a separate
checkpoint (one file, shards, VLM renames), and the errors for a missing, truncated, mismatched
or non-finite one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import hsr_plugin  # noqa: F401
from hsr_plugin.architecture import find_attention_blocks
from hsr_plugin.cli import main
from hsr_plugin.dense_source import DenseSnapshot, SafetensorsDenseSource, checkpoint_key_candidates
from tests.helpers import (
    assert_inputs_untouched,
    hsr_recipe,
    load_model,
    run_oneshot,
    work_args,
)


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


def test_non_finite_dense_weights_are_refused_by_name(work, tmp_path):
    dense = tmp_path / "dense-nan"
    shutil.copytree(work["model"], dense)
    weights = load_file(str(dense / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    weights[key][0, 0] = float("nan")
    save_file(weights, str(dense / "model.safetensors"))
    out = tmp_path / "out"
    extra = ["--set", f"HSRModifier.dense_model={dense}", "--set", "HSRModifier.num_heads=8"]
    with pytest.raises(ValueError, match=r"dense weight of model\.layers\.0\.self_attn\.q_proj"):
        main(work_args(work, out, *extra))
    assert not out.exists()
    assert_inputs_untouched(work)


def test_a_truncated_dense_model_is_named(work, tmp_path, capsys):
    from hsr_plugin.cli import run

    dense = tmp_path / "dense"
    shutil.copytree(work["model"], dense)
    (dense / "model.safetensors").write_bytes((dense / "model.safetensors").read_bytes()[:500])
    args = work_args(work, tmp_path / "out", "--set", f"HSRModifier.dense_model={dense}")
    assert run(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{dense / 'model.safetensors'}: not a readable safetensors file" in line, line
    assert_inputs_untouched(work)


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


def test_a_dense_source_may_be_one_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    from hsr_plugin.dense_source import SafetensorsDenseSource

    weight = torch.arange(6.0).reshape(2, 3)
    save_file({"model.layers.0.self_attn.q_proj.weight": weight}, str(tmp_path / "w.safetensors"))
    source = SafetensorsDenseSource(tmp_path / "w.safetensors")
    assert torch.equal(source.get("model.layers.0.self_attn.q_proj"), weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        SafetensorsDenseSource(tmp_path / "empty")
    assert str(err.value) == f"dense_model {tmp_path / 'empty'} holds no .safetensors files"
