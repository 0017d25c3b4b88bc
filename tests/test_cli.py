"""`hsr compress`: oneshot with a recipe file, overrides, atomic output, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsr_plugin.cli import main
from tests.helpers import compress_args, compress_tiny, folder_digest, log_messages

REPO = Path(__file__).resolve().parents[1]


def test_compress_writes_model_report_and_resolved_recipe(
    model_dirs, calib_files, tmp_path, monkeypatch
):
    import llmcompressor  # noqa: F401  (it resets loguru's sinks when first imported)

    monkeypatch.chdir(REPO)
    before = folder_digest(model_dirs["llama"])
    out = tmp_path / "out"
    with log_messages() as lines:
        assert compress_tiny(model_dirs["llama"], out, calib_files) == 0
    assert f"hsr compress: {model_dirs['llama']} with recipes/wanda_hsr.yaml -> {out}" in lines
    assert f"hsr compress: model saved to {out}, report {out / 'hsr_report.json'}" in lines
    report = json.loads((out / "hsr_report.json").read_text())
    assert report["config"]["num_heads"] == 2 and report["totals"]["restored"] > 0
    assert (out / "config.json").is_file() and (out / "hsr_recipe_resolved.yaml").is_file()
    assert "num_heads: 2" in (out / "hsr_recipe_resolved.yaml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], (
        "staging folder left behind"
    )
    assert folder_digest(model_dirs["llama"]) == before
    with pytest.raises(SystemExit, match="exists and is not empty"):
        compress_tiny(model_dirs["llama"], out, calib_files)
    assert compress_tiny(model_dirs["llama"], out, calib_files, "--overwrite") == 0
    # --num-samples reaches the pruning stage: two calibration rows prune differently than six
    fewer = tmp_path / "fewer"
    assert compress_tiny(model_dirs["llama"], fewer, calib_files, "--num-samples", "2") == 0
    assert (fewer / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


def test_compress_rejects_a_folder_that_is_not_a_model(tmp_path, calib_files, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit, match="holds no config.json"):
        compress_tiny(tmp_path, tmp_path / "out", calib_files)


def test_unknown_override_target(model_dirs, calib_files, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match="has no QuantizationModifier"):
        compress_tiny(
            model_dirs["llama"],
            tmp_path / "o",
            calib_files,
            "--set",
            "QuantizationModifier.scheme=FP8",
        )


def test_compress_without_hsr_writes_no_report(model_dirs, calib_files, tmp_path, monkeypatch):
    import llmcompressor  # noqa: F401  (it resets loguru's sinks when first imported)

    monkeypatch.chdir(REPO)
    out = tmp_path / "pruned"
    args = compress_args(model_dirs["llama"], "recipes/wanda.yaml", out, calib_files["utility"])
    with log_messages() as lines:
        assert main(args) == 0
    assert f"hsr compress: model saved to {out}" in lines
    assert (out / "model.safetensors").is_file() and not (out / "hsr_report.json").exists()
