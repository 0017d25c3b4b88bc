"""Prune -> HSR -> quantize, with the recipes users run: INT8 W8A8 and GPTQ W4A16.

Each recipe runs through `hsr compress` on the tiny Llama, and again without its HSR stage. The
restored weights must reach quantization: the quantized weights of the modules HSR restored
differ from the run without HSR, and (for W8A8, which quantizes each matrix on its own) every
other module is bit-identical. The checkpoint carries a compressed-tensors quantization config
and no sparsity config (vLLM rejects one with targets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from hsr_plugin.cli import main
from tests.helpers import compress_args

REPO = Path(__file__).resolve().parents[1]


def _compress(model, recipe: Path, out: Path, calib) -> None:
    hsr = "hsr_stage" in yaml.safe_load(recipe.read_text())
    sets = (calib["safety"], calib["utility"]) if hsr else (None, None)
    assert main(compress_args(model, recipe, out, calib["utility"], *sets)) == 0


@pytest.mark.parametrize(
    ("recipe", "fmt", "weight_key", "independent_layers"),
    [
        ("wanda_hsr_w8a8.yaml", "int-quantized", "weight", True),
        ("wanda_hsr_gptq_w4a16.yaml", "pack-quantized", "weight_packed", False),
    ],
    ids=["w8a8", "gptq-w4a16"],
)
def test_restored_weights_reach_quantization(
    model_dirs, calib_files, tmp_path, recipe, fmt, weight_key, independent_layers
):
    stages = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    gptq = stages["quant_stage"]["quant_modifiers"].get("GPTQModifier")
    if gptq is not None:  # the tiny model's width (64) is not a multiple of W4A16's group (128)
        del gptq["scheme"]
        weights = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
        gptq["config_groups"] = {"group_0": {"targets": ["Linear"], "weights": weights}}
    source = tmp_path / recipe
    source.write_text(yaml.safe_dump(stages, sort_keys=False))
    without = tmp_path / "no_hsr.yaml"
    del stages["hsr_stage"]
    without.write_text(yaml.safe_dump(stages, sort_keys=False))
    _compress(model_dirs["llama"], source, tmp_path / "hsr", calib_files)
    _compress(model_dirs["llama"], without, tmp_path / "plain", calib_files)

    config = json.loads((tmp_path / "hsr" / "config.json").read_text())["quantization_config"]
    assert config["format"] == fmt and config["quant_method"] == "compressed-tensors"
    assert config["sparsity_config"] == {}, "vLLM rejects any sparsity_config with targets"

    report = json.loads((tmp_path / "hsr" / "hsr_report.json").read_text())
    restored = {row["module"] for row in report["restored"] if row["restored"] > 0}
    assert restored, "HSR restored nothing to quantize"
    hsr = load_file(str(tmp_path / "hsr" / "model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert hsr.keys() == plain.keys()
    for module in restored:
        key = f"{module}.{weight_key}"
        assert not (hsr[key] == plain[key]).all(), f"{module}: restored values were not quantized"
    if independent_layers:  # round-to-nearest: the other matrices are quantized identically
        for key in hsr:
            if key.rsplit(".", 1)[0] not in restored:
                assert (hsr[key] == plain[key]).all(), f"{key} changed without a restoration"
    first = min(int(m.split(".layers.")[1].split(".")[0]) for m in restored)
    for key in hsr:
        if ".layers." in key and int(key.split(".layers.")[1].split(".")[0]) < first:
            assert (hsr[key] == plain[key]).all(), f"{key}: a layer before HSR's changed"
