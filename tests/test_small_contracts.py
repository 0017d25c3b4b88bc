"""Small contracts the larger tests pass through without pinning: staging-folder bookkeeping,
recipe overrides, MLP discovery, MLP channel slices, and HSRModifier's registration."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
import torch

from hsr_eval import common
from hsr_plugin.recipe_overrides import apply_overrides, parse_override, recipe_modifiers
from tests.helpers import log_messages, tiny_llama


# ----------------------------------------------------------------------------- staging folders
def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_alive_tells_a_running_process_from_an_ended_one():
    assert common.process_alive(os.getpid()) is True
    assert common.process_alive(_dead_pid()) is False


def test_only_the_staging_folders_of_ended_writers_are_removed(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / f".out.pid{_dead_pid()}.abc"
    live = tmp_path / f".out.pid{os.getpid()}.def"
    other = tmp_path / f".outer.pid{_dead_pid()}.ghi"  # another output's staging
    for folder in (dead, live, other):
        folder.mkdir()
    common.remove_stale_staging(target)
    assert not dead.exists() and live.is_dir() and other.is_dir()


def test_published_folders_and_subfolders_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        with common.published_dir(tmp_path / "out") as staging:
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "data.bin").write_bytes(b"x")
            script = staging / "run.sh"
            script.write_text("#!/bin/sh\n")
            script.chmod(0o700)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    out = tmp_path / "out"
    assert (mode(out), mode(out / "sub")) == (0o750, 0o750)
    assert (mode(out / "sub" / "data.bin"), mode(out / "run.sh")) == (0o640, 0o750)


# ----------------------------------------------------------------------------- recipe overrides
def test_an_override_value_may_hold_equals_signs():
    assert parse_override("HSRModifier.ignore=re:a=b") == ("HSRModifier", "ignore", "re:a=b")


def test_a_modifier_without_arguments_takes_overrides():
    recipe = {"hsr_stage": {"hsr_modifiers": {"HSRModifier": None}}}
    assert recipe_modifiers(recipe) == [("HSRModifier", {})]
    apply_overrides(recipe, ["HSRModifier.num_heads=3"])
    assert recipe["hsr_stage"]["hsr_modifiers"]["HSRModifier"] == {"num_heads": 3}


# ----------------------------------------------------------------------------- MLP units


def test_find_mlp_blocks_keeps_only_the_asked_layers():
    from hsr_plugin.architecture import find_mlp_blocks

    model = tiny_llama()
    assert [b.layer for b in find_mlp_blocks(model)] == [0, 1, 2]
    blocks = find_mlp_blocks(model, layers=[2, 0])
    assert [(b.layer, b.name, b.intermediate) for b in blocks] == [
        (0, "model.layers.0.mlp", 24),
        (2, "model.layers.2.mlp", 24),
    ]


def test_a_model_without_gated_mlps_is_named():
    from hsr_plugin.architecture import UnsupportedArchitectureError, find_mlp_blocks

    with pytest.raises(UnsupportedArchitectureError) as err:
        find_mlp_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert str(err.value) == (
        "no gated MLP (gate_proj/up_proj/down_proj) found in Sequential's decoder layers: "
        "MLP realignment (units: [heads, mlp]) needs one"
    )


def test_mlp_channel_slices_accept_channel_zero_and_the_last_channel():
    from hsr_plugin.slicing import mlp_channel_slices

    gate = mlp_channel_slices((4, 3), "gate", [0, 3])
    assert gate.nonzero().tolist() == [[0, 0], [0, 1], [0, 2], [3, 0], [3, 1], [3, 2]]
    down = mlp_channel_slices((3, 4), "down", [0])
    assert down.nonzero().tolist() == [[0, 0], [1, 0], [2, 0]]
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\), got \[-1\]"):
        mlp_channel_slices((3, 4), "down", [-1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\), got \[4\]"):
        mlp_channel_slices((4, 3), "up", [4])


# ----------------------------------------------------------------------------- registration
def test_registration_refuses_a_shipped_hsrmodifier_and_tolerates_a_missing_registry(
    monkeypatch,
):
    from llmcompressor.modifiers.factory import ModifierFactory

    from hsr_plugin import HSRModifier
    from hsr_plugin.registration import register_modifier

    monkeypatch.setattr(ModifierFactory, "refresh", classmethod(lambda cls: None))
    monkeypatch.setattr(ModifierFactory, "_main_registry", {"HSRModifier": object}, raising=False)
    with pytest.raises(RuntimeError, match="already ships a modifier named HSRModifier"):
        register_modifier(HSRModifier)
    monkeypatch.setattr(ModifierFactory, "_main_registry", {}, raising=False)
    monkeypatch.delattr(ModifierFactory, "_experimental_registry", raising=False)
    register_modifier(HSRModifier)
    assert ModifierFactory._registered_registry["HSRModifier"] is HSRModifier


def test_the_import_hook_steps_aside_when_llmcompressor_is_absent(monkeypatch):
    import importlib.util

    import hsr_plugin

    finder = hsr_plugin.RegisterWhenLlmCompressorLoads()
    assert finder.find_spec("numpy", None) is None  # not watched
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert finder.find_spec("llmcompressor", None) is None
    assert finder.find_spec("hsr_plugin.missing", None) is None


# ----------------------------------------------------------------------------- report, helpers
def test_build_report_is_exact():
    from hsr_plugin.attribution import HeadScore
    from hsr_plugin.report import SCHEMA_VERSION, SPARSEGPT_NOTE, build_report

    scores = [HeadScore(1, 0, 0, 0.5), HeadScore(0, 1, 0, 0.5), HeadScore(0, 0, 0, 0.9)]
    rows = [
        {"module": "a", "restored": 3, "pruned_in_slice": 9, "candidates": 4, "unit": "heads"},
        {"module": "b", "restored": 2, "pruned_in_slice": 5, "candidates": 2, "unit": "mlp"},
        {"module": "c", "restored": 1, "pruned_in_slice": 2, "candidates": 1},  # heads by default
    ]
    report = build_report(
        config={"head_score": "reference"},
        model={"name": "m"},
        pruned_by=["SparseGPTModifier"],
        head_scores=scores,
        selected=[(0, 0)],
        rows=rows,
        language_params=20000,
        pruned_params=0,
        timing={"restore": 0.123456},
        mlp_selected=[(1, 7, 0.25)],
    )
    assert report == {
        "schema_version": SCHEMA_VERSION,
        "config": {"head_score": "reference"},
        "model": {"name": "m"},
        "pruned_by": ["SparseGPTModifier"],
        "heads": [  # by score, ties by layer then head
            {"layer": 0, "head": 0, "kv_group": 0, "score": 0.9},
            {"layer": 0, "head": 1, "kv_group": 0, "score": 0.5},
            {"layer": 1, "head": 0, "kv_group": 0, "score": 0.5},
        ],
        "selected_heads": [[0, 0]],
        "restored": rows,
        "selected_mlp_channels": [{"layer": 1, "channel": 7, "score": 0.25}],
        "totals": {
            "restored": 6,
            "restored_in_heads": 4,
            "restored_in_mlp": 2,
            "language_params": 20000,
            "pruned_params": 0,
            "restored_per_10k_params": 3.0,
            "restored_per_10k_pruned": 0.0,
        },
        "timing_s": {"restore": 0.1235},
        "scoring": {},
        "notes": [
            SPARSEGPT_NOTE,
            "reference head score: one score per KV group, reported as head index g",
        ],
    }
    plain = build_report(
        config={"head_score": "ships_kl"},
        model={},
        pruned_by=["WandaPruningModifier"],
        head_scores=scores,
        selected=[],
        rows=[],
        language_params=0,
        pruned_params=10,
        timing={},
        scoring={"device": "cpu"},
    )
    assert plain["notes"] == [] and plain["scoring"] == {"device": "cpu"}
    assert plain["totals"]["restored_per_10k_params"] == 0.0


def test_model_inputs_are_ids_mask_and_extras():
    from hsr_plugin.calibration import CalibrationSample

    ids, mask = torch.tensor([[1, 2]]), torch.tensor([[1, 1]])
    pixels = torch.zeros(1, 3)
    sample = CalibrationSample(ids, mask, mask.bool(), 1, {"pixel_values": pixels})
    inputs = sample.model_inputs()
    assert list(inputs) == ["input_ids", "attention_mask", "pixel_values"]
    assert inputs["input_ids"] is ids and inputs["attention_mask"] is mask
    assert inputs["pixel_values"] is pixels


def test_user_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HSR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert common.user_cache_dir() == tmp_path / "xdg" / "hsr-plugin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert common.user_cache_dir() == tmp_path / "home" / ".cache" / "hsr-plugin"
    monkeypatch.setenv("HSR_CACHE_DIR", str(tmp_path / "mine"))
    assert common.user_cache_dir() == tmp_path / "mine"


def test_a_matrix_that_saw_no_response_token_is_named():
    from hsr_plugin.importance import InputNormAccumulator
    from hsr_plugin.neuron_scoring import require_seen

    seen, unseen = InputNormAccumulator(2), InputNormAccumulator(2)
    seen.update(torch.ones(1, 3, 2))
    require_seen({"a": seen})
    with pytest.raises(ValueError) as err:
        require_seen({"a": seen, "b": unseen, "c": InputNormAccumulator(2)})
    assert str(err.value) == (
        "no response tokens reached b (and 1 more): check the calibration data"
    )


def test_an_execution_device_on_the_disk_is_refused(monkeypatch):
    import compressed_tensors.offload as offload

    from hsr_plugin.placement import execution_device

    model = torch.nn.Linear(2, 2)
    assert execution_device(model) == torch.device("cpu")
    monkeypatch.setattr(offload, "get_execution_device", lambda module: "disk")
    with pytest.raises(ValueError, match="execution device is the disk"):
        execution_device(model)


def test_totals_per_ten_thousand():
    from hsr_plugin.report import totals

    rows = [{"restored": 3}, {"restored": 2, "unit": "mlp"}]
    assert totals(rows, 50000, 1000) == {
        "restored": 5,
        "restored_in_heads": 3,
        "restored_in_mlp": 2,
        "language_params": 50000,
        "pruned_params": 1000,
        "restored_per_10k_params": 1.0,
        "restored_per_10k_pruned": 50.0,
    }


@pytest.mark.parametrize("pattern", ["0:4", "-1:4", "5:4"])
def test_nm_patterns_need_at_least_one_kept_weight(pattern):
    from hsr_plugin.restore import parse_nm

    with pytest.raises(ValueError, match=f"preserve_nm '{pattern}': need 0 < N <= M"):
        parse_nm(pattern)
    assert parse_nm("1:4") == (1, 4) and parse_nm("4:4") == (4, 4) and parse_nm(None) is None


def test_finalize_reports_success_only_after_restoring():
    from hsr_plugin import HSRModifier

    modifier = HSRModifier()
    with pytest.raises(RuntimeError, match="finalized before it restored any weights"):
        modifier.on_finalize(state=None)  # (after restoring, every oneshot run finalizes it)


def test_replace_generated_block_rewrites_only_its_own_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Titel ✓\n<!-- a:begin -->\nold a\n<!-- a:end -->\nkept\n"
        "<!-- b:begin -->\nold b\n<!-- b:end -->\n"
    )
    common.replace_generated_block(readme, "a", "\n| new | ✓ |\n\n")
    assert readme.read_text() == (
        "# Titel ✓\n<!-- a:begin -->\n| new | ✓ |\n<!-- a:end -->\nkept\n"
        "<!-- b:begin -->\nold b\n<!-- b:end -->\n"
    )
    with pytest.raises(ValueError, match=r"has no <!-- c:begin --> \.\.\. <!-- c:end --> block"):
        common.replace_generated_block(readme, "c", "x")


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


def test_registration_names_the_modifier(monkeypatch):
    from llmcompressor.modifiers.factory import ModifierFactory

    from hsr_plugin import HSRModifier
    from hsr_plugin.registration import register_modifier

    monkeypatch.setattr(ModifierFactory, "refresh", classmethod(lambda cls: None))
    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    register_modifier(HSRModifier)
    assert ModifierFactory._registered_registry == {"HSRModifier": HSRModifier}


@pytest.mark.parametrize(
    "content, message",
    [
        ("a: [1, 2\nb: 3\n", "recipe {path}: not valid YAML at line 2, column 2: expected ',' or "
         "']', but got ':'"),
        ("a: \x01\n", "recipe {path}: not valid YAML: unacceptable character #x0001: special "
         "characters are not allowed"),  # a reader error carries no position
        ("a_stage:\n  x: 1\n", "recipe {path} defines no modifiers: llm-compressor reads only "
         "top-level keys ending in '_stage' and, inside them, keys ending in '_modifiers'"),
    ],
    ids=["yaml-error", "yaml-error-without-position", "no-modifiers"],
)  # fmt: skip
def test_recipe_errors_are_exact(tmp_path, content, message):
    from hsr_plugin.recipe_overrides import load_recipe_dict

    path = tmp_path / "recipe.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_recipe_dict(path)
    assert str(err.value) == message.format(path=path)


def test_an_override_for_a_missing_modifier_names_the_ones_present():
    recipe = {"s_stage": {"s_modifiers": {"WandaPruningModifier": {}, "HSRModifier": {}}}}
    with pytest.raises(ValueError) as err:
        apply_overrides(recipe, ["QuantizationModifier.scheme=FP8"])
    assert str(err.value) == (
        "override 'QuantizationModifier.scheme=FP8': the recipe has no QuantizationModifier "
        "(it has: HSRModifier, WandaPruningModifier)"
    )


def test_budget_ties_go_to_the_earlier_matrix_then_the_lower_index():
    from hsr_plugin.restore import budget_masks

    masks = {"a": torch.ones(40, 125, dtype=torch.bool), "b": torch.ones(40, 125, dtype=torch.bool)}
    flat = torch.tensor([1.0, 0.0] * 2500).reshape(40, 125)
    kept = budget_masks(masks, {"a": flat, "b": flat.clone()}, cap=3000)
    ones = flat.flatten().nonzero().flatten()
    want_a = torch.zeros(5000, dtype=torch.bool)
    want_a[ones] = True  # every 1.0 of a (2500), then the first 500 ones of b
    want_b = torch.zeros(5000, dtype=torch.bool)
    want_b[ones[:500]] = True
    assert torch.equal(kept["a"].flatten(), want_a) and torch.equal(kept["b"].flatten(), want_b)


def test_the_package_names_what_hsrmodifier_needs(monkeypatch):
    import importlib.util

    import hsr_plugin

    with pytest.raises(AttributeError) as err:
        hsr_plugin.__getattr__("Nope")
    assert str(err.value) == "module 'hsr_plugin' has no attribute 'Nope'"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llmcompressor" else real(n, *a)
    )
    with pytest.raises(ImportError) as err:
        hsr_plugin.__getattr__("HSRModifier")
    # the pin comes from the installed metadata, whose one source is pyproject.toml
    assert (
        str(err.value) == "HSRModifier needs llm-compressor: pip install 'llmcompressor==0.14.0.1'"
    )


def test_a_stale_staging_folder_that_cannot_be_removed_does_not_stop_a_run(tmp_path, monkeypatch):
    stale = tmp_path / f".out.pid{_dead_pid()}.abc"
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"x")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "unlink", refuse)
    common.remove_stale_staging(tmp_path / "out")  # best effort: no error
    assert (stale / "weights.bin").is_file()


def test_log_summary_is_exact():

    from hsr_plugin.report import log_summary

    report = {
        "config": {"head_score": "ships_kl", "neuron_score": "wanda", "head_slicing": "exact"},
        "heads": [{"layer": 1, "head": h, "score": 1.0 / (h + 1)} for h in range(6)],
        "selected_heads": [[1, 0], [1, 1]],
        "totals": {
            "restored": 1234,
            "pruned_params": 56789,
            "restored_per_10k_params": 0.5,
            "restored_per_10k_pruned": 217.3,
            "restored_in_mlp": 1000,
            "restored_in_heads": 234,
        },
        "timing_s": {"head_scoring": 1.25, "restore": 0.04},
        "selected_mlp_channels": [{"layer": 0, "channel": 3, "score": 1.0}],
        "scoring": {
            "device": "cpu",
            "placement": "no accelerator is available",
            "head_scoring_forward_equivalents": 4.5,
            "budget": 2000,
        },
        "notes": ["n1"],
    }
    with log_messages() as messages:
        log_summary(report)
        log_summary({**report, "selected_mlp_channels": [], "scoring": {}, "notes": []})
    assert messages[0] == (
        "HSR summary\n"
        "  head score ships_kl | neuron score wanda | slicing exact\n"
        "  top heads: L1H0=1, L1H1=0.5, L1H2=0.3333, L1H3=0.25, L1H4=0.2\n"
        "  selected (2): L1H0, L1H1\n"
        "  restored 1,234 weights of 56,789 pruned (0.5000 per 10k params, 217.3000 per 10k "
        "pruned)\n"
        "  MLP channels (1): 1,000 restored there, 234 in the heads\n"
        "  timing: head_scoring 1.2s, restore 0.0s\n"
        "  scored on cpu (no accelerator is available), head scoring 4.5 forward-pass "
        "equivalents, budget 2,000\n"
        "  note: n1"
    )
    assert messages[1] == "\n".join(messages[0].splitlines()[:5] + messages[0].splitlines()[6:7])


def test_the_modifier_hands_its_fields_to_the_head_scorer(monkeypatch):
    import hsr_plugin.head_scorers as scorers
    from hsr_plugin import HSRModifier
    from hsr_plugin.scoring_context import ScoringContext

    calls = []
    monkeypatch.setattr(scorers, "score_heads", lambda *a, **k: calls.append((a, k)))
    hsr = HSRModifier(
        head_score="ships_subspace", ablation_eps=0.25, subspace_rank=3, batch_size=5,
        attribution_memory_gb=0.5,
    )  # fmt: skip
    ctx = ScoringContext("model", "blocks", "device", hsr, 5, 7, 1 << 29)
    hsr.head_scorer().score(ctx, "safety", "cost")
    ((args, kwargs),) = calls
    assert args == ("model", "blocks", "safety", "ships_subspace", 0.25, 3, 5, 7)
    assert kwargs == {
        "hooks": hsr, "device": "device", "memory_budget": 1 << 29, "cost": "cost"
    }  # fmt: skip
    first_order = HSRModifier(head_score="attribution").head_scorer()
    assert first_order.method == "attribution" and first_order.units(_Block()) == 4
    assert HSRModifier(head_score="reference").head_scorer().units(_Block()) == 2


class _Block:
    num_heads, num_kv_heads = 4, 2


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ((4, 4), "q", 0, 0, 2, 2, "rows"),
            "head slicing mode must be 'exact' or 'reference', got 'rows'",
        ),
        (((4, 4), "x", 0, 0, 2, 2, "exact"), "projection must be one of q, k, v, o; got 'x'"),
        (
            ((4, 4, 1), "q", 0, 0, 2, 2, "exact"),
            "weight shape must be 2-D (out, in), got (4, 4, 1)",
        ),
        (((4, 4), "q", 0, 0, 0, 2, "exact"), "num_heads (2) and head_dim (0) must be positive"),
        (((4, 4), "q", 2, 0, 2, 2, "exact"), "head 2 is outside [0, 2)"),
        (((4, 4), "k", 0, -1, 2, 2, "exact"), "kv_group must be >= 0, got -1"),
        (
            ((3, 4), "q", 0, 0, 2, 2, "exact"),
            "q_proj has 3 rows, fewer than num_heads*head_dim = 4",
        ),
        (((2, 4), "v", 0, 1, 2, 2, "exact"), "v_proj has 2 rows; KV group 1 needs 4"),
        (
            ((4, 3), "o", 0, 0, 2, 2, "exact"),
            "o_proj has 3 columns, fewer than num_heads*head_dim = 4",
        ),
    ],
)
def test_head_slice_arguments_are_checked_with_exact_messages(args, message):
    from hsr_plugin.slicing import head_slice_mask

    with pytest.raises(ValueError) as err:
        head_slice_mask(*args)
    assert str(err.value) == message
