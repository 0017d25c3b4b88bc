"""The same-K study's random control and head agreement (integration/bench/bench_real_same_k.py),
on small safetensors checkpoints laid out like a saved Qwen2 model."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from integration.bench.bench_real_same_k import head_agreement, random_control


def _checkpoints(tmp_path):
    torch.manual_seed(0)
    dense = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8).to(torch.bfloat16),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(8, 8).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(8).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8).to(torch.bfloat16),
    }
    pruned = {k: v.float() for k, v in dense.items()}
    for key in pruned:
        if key.endswith(".weight"):
            pruned[key].view(-1)[::2] = 0.0
    folders = {}
    for name, tensors in (("dense", dense), ("pruned", pruned)):
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, folder / "model.safetensors")
        (folder / "config.json").write_text("{}")
        folders[name] = folder
    return folders, dense, pruned


def test_random_control_puts_back_exactly_count_pruned_attention_weights(tmp_path):
    folders, dense, pruned = _checkpoints(tmp_path)
    out = random_control(folders["pruned"], folders["dense"], tmp_path / "out", 20, seed=0)
    restored = load_file(out / "model.safetensors")
    changed = 0
    for key, before in pruned.items():
        moved = restored[key] != before
        changed += int(moved.sum())
        if moved.any():
            assert "self_attn" in key and key.endswith(".weight")
            assert torch.equal(restored[key][moved], dense[key][moved].float())
            assert bool((before[moved] == 0).all())
    assert changed == 20
    assert (out / "config.json").read_text() == "{}"
    assert json.loads((out / "random_control.json").read_text()) == {"count": 20, "seed": 0}
    # the inputs are untouched; the same seed draws the same weights, another seed others
    kept = load_file(folders["pruned"] / "model.safetensors")
    assert all(torch.equal(kept[k], pruned[k]) for k in pruned)
    again = random_control(folders["pruned"], folders["dense"], tmp_path / "again", 20, seed=0)
    other = random_control(folders["pruned"], folders["dense"], tmp_path / "other", 20, seed=1)
    same = load_file(again / "model.safetensors")
    different = load_file(other / "model.safetensors")
    assert all(torch.equal(same[k], restored[k]) for k in restored)
    assert not all(torch.equal(different[k], restored[k]) for k in restored)


def test_random_control_refuses_more_than_the_pruned_attention_weights(tmp_path):
    folders, _, _ = _checkpoints(tmp_path)
    with pytest.raises(ValueError, match="exceeds the 64 pruned attention weights"):
        random_control(folders["pruned"], folders["dense"], tmp_path / "out", 65)
    assert not (tmp_path / "out").exists()


def test_head_agreement_counts_the_shared_top_heads_and_ranks_every_head(tmp_path):
    heads = [(layer, head) for layer in range(2) for head in range(3)]
    exact = [{"layer": a, "head": b, "score": float(i)} for i, (a, b) in enumerate(heads)]
    # the same order but for the best head and the worst swapped
    first = [dict(row) for row in exact]
    first[0]["score"], first[5]["score"] = 5.0, 0.0
    paths = []
    for name, rows in (("exact", exact), ("first", first)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"heads": rows}))
        paths.append(path)
    agreement = head_agreement(*paths, top=2)
    assert agreement["overlap"] == 1  # top-2: {(1,2), (1,1)} against {(0,0), (1,1)}
    assert agreement["rho"] == pytest.approx(1 - 6 * (25 + 25) / (6 * 35))
    assert head_agreement(paths[0], paths[0], top=2) == {"top": 2, "overlap": 2, "rho": 1.0}
