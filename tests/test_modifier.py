"""hsr_plugin.modifier: the lifecycle's own refusals (too many heads, non-finite weights) and a
finalize that reports success only after restoring."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

import hsr_plugin  # noqa: F401
from hsr_plugin import HSRModifier
from tests.helpers import (
    HSR,
    WANDA,
    assert_inputs_untouched,
    run_oneshot,
    with_option,
    work_args,
)


def test_too_many_heads(model_dirs, calib_files):
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=99, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
    )
    with pytest.raises(ValueError, match="num_heads=99 exceeds the 8 heads"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_non_finite_model_weights_are_refused_by_name(work, tmp_path, capsys):
    from hsr_plugin.cli import run

    broken = tmp_path / "nan-model"
    shutil.copytree(work["model"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.self_attn.o_proj.weight"][3, 3] = float("inf")
    save_file(weights, str(broken / "model.safetensors"))
    assert run(with_option(work_args(work, tmp_path / "out"), "--model", str(broken))) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "weight of model.layers.1.self_attn.o_proj has 1 non-finite values" in line, line
    assert not (tmp_path / "out").exists()
    assert_inputs_untouched(work)


def test_finalize_reports_success_only_after_restoring():

    modifier = HSRModifier()
    with pytest.raises(RuntimeError, match="finalized before it restored any weights"):
        modifier.on_finalize(state=None)  # (after restoring, every oneshot run finalizes it)
