"""Recipes and runners shared by the test modules (tests import helpers from here, never from
each other)."""

from __future__ import annotations

from pathlib import Path

import torch

from hsr_plugin.common import folder_digest  # noqa: F401  (re-exported for the tests)
from hsr_plugin.oneshot_data import calibration_kwargs

__all__ = [
    "FP8",
    "HSR",
    "SPARSEGPT",
    "WANDA",
    "compress_args",
    "folder_digest",
    "load_model",
    "run_oneshot",
]

WANDA = """
sparsity_stage:
  sparsity_modifiers:
    WandaPruningModifier:
      sparsity: 0.5
      mask_structure: '{structure}'
      targets: ['re:.*layers\\.\\d+$']
      ignore: ['re:.*lm_head', 're:.*vision_tower.*', 're:.*multi_modal_projector.*',
               're:.*visual.*']
"""
SPARSEGPT = WANDA.replace("WandaPruningModifier", "SparseGPTModifier")
HSR = """
hsr_stage:
  hsr_modifiers:
    HSRModifier:
      num_heads: {num_heads}
      safety_data: '{safety}'
      utility_data: '{utility}'
      seed: 0
{extra}"""
FP8 = """
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      scheme: FP8_DYNAMIC
      ignore: ['re:.*lm_head', 're:.*vision_tower.*', 're:.*multi_modal_projector.*']
"""


def load_model(model_dir: Path):
    from hsr_plugin.models import load_model as load

    return load(model_dir, torch.float32)


def run_oneshot(model_dir: Path, recipe, utility: Path, **kwargs):
    from llmcompressor import oneshot

    from hsr_plugin.calibration import load_processor

    processor = load_processor(str(model_dir))
    calibration = calibration_kwargs(str(utility), processor, None, 128)
    model = load_model(model_dir)
    return oneshot(
        model=model,
        processor=processor,
        recipe=recipe,
        max_seq_length=128,
        shuffle_calibration_samples=False,
        **calibration,
        **kwargs,
    )


def compress_args(
    model, recipe, output, dataset, safety=None, utility=None, num_heads=2, samples=6
) -> list[str]:
    """`hsr compress` arguments; with `safety`/`utility`, HSR is pointed at those sets."""
    args = ["compress", "--model", str(model), "--recipe", str(recipe), "--output", str(output)]
    args += ["--dataset", str(dataset), "--num-samples", str(samples), "--max-seq-length", "128"]
    if safety is not None:
        args += ["--set", f"HSRModifier.safety_data={safety}"]
        args += ["--set", f"HSRModifier.utility_data={utility}"]
        args += ["--set", f"HSRModifier.num_heads={num_heads}"]
    return args
