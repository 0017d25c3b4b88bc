"""Recipes and runners shared by the test modules (tests import helpers from here, never from
each other)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from hsr_eval.common import folder_digest  # noqa: F401  (re-exported for the tests)
from hsr_plugin.calibration import CalibrationSample
from hsr_plugin.oneshot_data import calibration_kwargs

__all__ = [
    "FP8",
    "HSR",
    "SPARSEGPT",
    "WANDA",
    "adds_bos",
    "compress_args",
    "folder_digest",
    "load_model",
    "log_messages",
    "response_samples",
    "run_oneshot",
    "sample_comparison",
    "sample_report",
    "tiny_llama",
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


def sample_report():
    """A small HSR report (3 layers x 4 heads, 2 selected), as HSRModifier writes one."""
    heads = [
        {"layer": layer, "head": h, "kv_group": h // 2, "score": float(layer * 4 + h)}
        for layer in range(3)
        for h in range(4)
    ]
    heads.sort(key=lambda r: -r["score"])
    return {
        "schema_version": 1,
        "config": {
            "head_score": "ships_subspace",
            "neuron_score": "wanda",
            "head_slicing": "exact",
        },
        "heads": heads,
        "selected_heads": [[2, 3], [2, 2]],
        "restored": [
            {
                "module": "model.layers.2.self_attn.q_proj",
                "restored": 7,
                "pruned_in_slice": 50,
                "candidates": 20,
            }
        ],
        "totals": {
            "restored": 7,
            "language_params": 10000,
            "pruned_params": 5000,
            "restored_per_10k_params": 7.0,
            "restored_per_10k_pruned": 14.0,
        },
        "timing_s": {"head_scoring": 1.5, "restore": 0.1},
    }


def sample_comparison():
    """A small model comparison (dense, wanda, wanda+hsr), as the comparison runner writes one."""
    return {
        "models": {
            "dense": {
                "asr": 0.02,
                "refusal_rate": 0.98,
                "over_refusal_rate": 0.05,
                "utility": 0.9,
                "sparsity": 0.0,
            },
            "wanda": {
                "asr": 0.40,
                "refusal_rate": 0.60,
                "over_refusal_rate": 0.03,
                "utility": 0.85,
                "sparsity": 0.5,
            },
            "wanda+hsr": {
                "asr": 0.20,
                "refusal_rate": 0.80,
                "over_refusal_rate": 0.04,
                "utility": 0.85,
                "sparsity": 0.4999,
            },
        },
        "rsr": {"wanda+hsr": 0.5263},
    }


def tiny_llama(layers: int = 3):
    """A random Llama of `layers` layers (hidden 16, 2 heads of 8, MLP 24), built in memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def response_samples(n: int = 2) -> list[CalibrationSample]:
    """`n` five-token samples whose last three tokens are the response (a 2-token prompt)."""
    out = []
    for i in range(n):
        ids = torch.tensor([[1, 2 + i, 3, 4, 5]])
        response = torch.tensor([[False, False, True, True, True]])
        out.append(CalibrationSample(ids, torch.ones_like(ids), response, 2))
    return out


def adds_bos(tokenizer):
    """A tokenizer that, like Llama's, puts <s> in front when asked for special tokens."""
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    assert tokenizer("hi")["input_ids"][0] == bos  # the post-processor is live
    return tokenizer


@contextmanager
def log_messages(level: str = "INFO") -> Iterator[list[str]]:
    """The messages loguru logs at `level` or above inside the block (import llmcompressor
    first where it matters: its first import resets loguru's sinks)."""
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level=level)
    try:
        yield messages
    finally:
        logger.remove(sink)
