"""Tiny models of the model families users prune, each built from its own transformers config
class and saved with its tokenizer or its own processor, and the end-to-end probe that the
support matrix (`support_matrix.py`) and the family tests both run.

A probe runs `oneshot` with Wanda 50% and then Wanda 50% + `HSRModifier(num_heads=2)` in one
setting, and checks the result against the dense and the pruned weights: every changed weight
was zero after pruning and now holds its exact dense value; every change lies in the selected
heads' slices (or the selected MLP channels); nothing outside the sliced projections changes;
the report's counts equal the counts measured on the tensors; N:M preservation keeps the
pattern. A probe that fails raises `ProbeFailure`; a family HSR refuses raises the package's
one-line error, which the matrix prints as the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from integration.bench import tiny_vlms_gemma_idefics_internvl as vlm_b
from integration.bench import tiny_vlms_llava_qwen_mllama as vlm_a
from integration.bench.tiny_models import (
    SAFETY_ROWS,
    UTILITY_ROWS,
    add_qwen2_vl_processor,
    build_llava,
    build_qwen2_vl,
    build_tokenizer,
    save_tiny,
    tiny_text_kwargs,
    write_image,
    write_jsonl,
)

__all__ = [
    "FAMILIES",
    "causal_builder",
    "MODES",
    "Family",
    "ProbeFailure",
    "calibration_files",
    "probe",
    "run_oneshot",
]


class ProbeFailure(AssertionError):
    """HSR ran on the family but its result broke one of the probe's checks."""


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[Path], Path]
    pictures: bool = False  # a VLM whose processor takes pictures in calibration rows
    notes: dict[str, str] = field(default_factory=dict)  # mode -> why it is not probed
    # modules the pruning stage must leave alone, and why (a limit of the pruner, not of HSR)
    prune_ignore: tuple[str, ...] = ()
    prune_note: str = ""


def causal_builder(config_name: str, model_name: str, **overrides) -> Callable[[Path], Path]:
    def build(out: Path) -> Path:
        import transformers

        tok = build_tokenizer()
        kwargs = tiny_text_kwargs(tok, **overrides)
        kwargs = {k: v for k, v in kwargs.items() if v is not _DROP}
        config = getattr(transformers, config_name)(**kwargs)
        torch.manual_seed(0)
        return save_tiny(getattr(transformers, model_name)(config), tok, out)

    return build


_DROP = object()  # a keyword the family's config does not take


def _no_pictures(reason: str) -> dict[str, str]:
    return {"pictures": f"untested here: {reason}", "pictures as content parts": "as pictures"}


def _build_qwen2_vl_processor(out: Path) -> Path:
    return add_qwen2_vl_processor(build_qwen2_vl(out))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("Llama", causal_builder("LlamaConfig", "LlamaForCausalLM")),
        Family("Mistral", causal_builder("MistralConfig", "MistralForCausalLM")),
        Family("Qwen2", causal_builder("Qwen2Config", "Qwen2ForCausalLM", head_dim=_DROP)),
        Family("Qwen3", causal_builder("Qwen3Config", "Qwen3ForCausalLM")),
        Family(
            "Qwen3-MoE",
            causal_builder(
                "Qwen3MoeConfig",
                "Qwen3MoeForCausalLM",
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
            ),  # fmt: skip
        ),
        Family(
            "Mixtral",
            causal_builder(
                "MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2
            ),  # fmt: skip
        ),
        Family(
            "Gemma2",
            causal_builder("Gemma2Config", "Gemma2ForCausalLM", final_logit_softcapping=3.0),
        ),
        Family(
            "Gemma3 (text)",
            causal_builder("Gemma3TextConfig", "Gemma3ForCausalLM", final_logit_softcapping=3.0),
        ),
        Family("OLMo2", causal_builder("Olmo2Config", "Olmo2ForCausalLM", head_dim=_DROP)),
        Family(
            "Granite",
            causal_builder(
                "GraniteConfig",
                "GraniteForCausalLM",
                logits_scaling=4.0,
                residual_multiplier=0.5,
                embedding_multiplier=2.0,
                attention_multiplier=0.25,
                head_dim=_DROP,
            ),  # fmt: skip
        ),
        Family(
            "Cohere",
            causal_builder("CohereConfig", "CohereForCausalLM", logit_scale=0.25, head_dim=_DROP),
        ),
        Family(
            "Phi-3",
            causal_builder("Phi3Config", "Phi3ForCausalLM", head_dim=_DROP),
        ),
        Family(
            "DeepSeek-V3 (MLA)",
            causal_builder(
                "DeepseekV3Config",
                "DeepseekV3ForCausalLM",
                head_dim=_DROP,
                num_key_value_heads=4,
                q_lora_rank=32,
                kv_lora_rank=16,
                qk_nope_head_dim=8,
                qk_rope_head_dim=8,
                v_head_dim=16,
                n_routed_experts=4,
                num_experts_per_tok=2,
                n_shared_experts=1,
                moe_intermediate_size=32,
                first_k_dense_replace=1,
                n_group=1,
                topk_group=1,
            ),  # fmt: skip
            prune_ignore=("re:.*kv_b_proj",),
            prune_note=(
                "llm-compressor 0.14's Wanda and SparseGPT cannot calibrate kv_b_proj (its input "
                "is 4-D), so the pruning stage ignores it"
            ),
        ),
        Family("LLaVA", build_llava, pictures=True),
        Family("Qwen2-VL", _build_qwen2_vl_processor, pictures=True),
        Family("Mllama", vlm_a.build_mllama, pictures=True),
        Family("LLaVA-NeXT", vlm_a.build_llava_next, pictures=True),
        Family("LLaVA-OneVision", vlm_a.build_llava_onevision, pictures=True),
        Family("Qwen2.5-VL", vlm_a.build_qwen2_5_vl, pictures=True),
        Family("Qwen3-VL", vlm_a.build_qwen3_vl, pictures=True),
        Family("Qwen3-VL-MoE", vlm_a.build_qwen3_vl_moe, pictures=True),
        Family("Gemma3 (VLM)", vlm_b.build_gemma3, pictures=True),
        Family("Idefics3", vlm_b.build_idefics3, pictures=True),
        Family("SmolVLM", vlm_b.build_smolvlm, pictures=True),
        Family("InternVL", vlm_b.build_internvl, pictures=True),
        Family("Aya Vision", vlm_b.build_aya_vision, pictures=True),
        Family("GLM-4V", vlm_b.build_glm4v, pictures=True),
        Family(
            "Mistral3",
            vlm_b.build_mistral3,
            notes=_no_pictures(vlm_b.NO_PICTURES["mistral3"]),
        ),
        Family(
            "Phi-4-multimodal",
            vlm_b.build_phi4_multimodal,
            notes=_no_pictures(vlm_b.NO_PICTURES["phi4_multimodal"]),
        ),
    ]
}

# Families transformers 5.17 ships that the matrix lists without a probe, with the reason.
NOT_PROBED: dict[str, str] = {
    "Gemma3n": "untested here: " + vlm_b.NO_PICTURES["gemma3n"],
    "Llama4, Pixtral (LLaVA with a Pixtral tower)": (
        "untested here: their processors need torchvision, which has no CPU build for this torch"
    ),
}

# mode -> (HSR fields, which calibration rows: "" text, "vl" a row's image, "parts" content
# parts; pruning mask structure)
MODES: dict[str, tuple[dict[str, Any], bool, str]] = {
    "text": ({}, "", "0:0"),
    "pictures": ({}, "vl", "0:0"),
    "pictures as content parts": ({}, "parts", "0:0"),
    "exact heads (ships_kl)": ({"head_score": "ships_kl"}, "", "0:0"),
    "first-order heads": ({"head_score": "attribution"}, "", "0:0"),
    "sparsegpt scores": ({"neuron_score": "sparsegpt"}, "", "0:0"),
    "snip scores": ({"neuron_score": "snip"}, "", "0:0"),
    "restore_gain": ({"neuron_score": "restore_gain"}, "", "0:0"),
    "mlp": ({"units": ["heads", "mlp"], "num_mlp_channels": 8}, "", "0:0"),
    "N:M 2:4": ({"preserve_nm": "2:4"}, "", "2:4"),
}


def calibration_files(root: Path) -> dict[str, Path]:
    """Safety and utility sets, text-only and with a picture in every row."""
    root.mkdir(parents=True, exist_ok=True)
    image = write_image(root / "unsafe.png")
    write_image(root / "safe.png", color=(30, 160, 60))
    return {
        "safety": write_jsonl(root / "safety.jsonl", SAFETY_ROWS),
        "utility": write_jsonl(root / "utility.jsonl", UTILITY_ROWS),
        "safety_vl": write_jsonl(root / "safety_vl.jsonl", SAFETY_ROWS, image.name),
        "utility_vl": write_jsonl(root / "utility_vl.jsonl", UTILITY_ROWS, "safe.png"),
        "safety_parts": _content_parts(root / "safety_parts.jsonl", SAFETY_ROWS, image.name),
        "utility_parts": _content_parts(root / "utility_parts.jsonl", UTILITY_ROWS, "safe.png"),
    }


def _content_parts(path: Path, rows: list[tuple[str, str]], image: str) -> Path:
    """Rows in Hugging Face's VLM chat format: the picture as an image part of the user turn."""
    import json

    lines = [
        json.dumps(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": image},
                            {"type": "text", "text": prompt},
                        ],
                    },
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        for prompt, answer in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(structure: str, hsr: dict[str, Any] | None, ignore: tuple[str, ...] = ()) -> str:
    import yaml

    recipe: dict[str, Any] = {
        "sparsity_stage": {
            "sparsity_modifiers": {
                "WandaPruningModifier": {
                    "sparsity": 0.5,
                    "mask_structure": structure,
                    "targets": [r"re:.*layers\.\d+$"],
                    "ignore": [
                        "re:.*lm_head",
                        "re:.*vision.*",
                        "re:.*multi_modal_projector.*",
                        "re:.*visual.*",
                        *ignore,
                    ],  # fmt: skip
                }
            }
        }
    }
    if hsr is not None:
        recipe["hsr_stage"] = {"hsr_modifiers": {"HSRModifier": hsr}}
    return yaml.safe_dump(recipe, sort_keys=False)


def _linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }


def run_oneshot(model_dir: Path, recipe: str, utility: Path, num_samples: int | None = None):
    """`oneshot` of `recipe` on the float32 model at `model_dir`, calibrated on `utility` in
    file order; (the model, HSR's report or None)."""
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.models import load_model
    from hsr_plugin.oneshot_data import calibration_kwargs

    processor = load_processor(str(model_dir))
    model = load_model(model_dir, torch.float32)
    oneshot(
        model=model,
        processor=processor,
        recipe=recipe,
        max_seq_length=128,
        shuffle_calibration_samples=False,
        **calibration_kwargs(str(utility), processor, num_samples, 128),
    )
    mods = [m for m in active_session().lifecycle.recipe.modifiers if isinstance(m, HSRModifier)]
    return model, (mods[0].report if mods else None)


def _allowed_masks(dense_model: nn.Module, report: dict, slicing: str) -> dict[str, torch.Tensor]:
    """Per module name: where restoration may happen (the selected heads' bands, the selected
    MLP channels)."""
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.mlp_blocks import find_mlp_blocks
    from hsr_plugin.slicing import band_mask, mlp_channel_slices

    kv_of = {(h["layer"], h["head"]): h["kv_group"] for h in report["heads"]}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for layer, head in report["selected_heads"]:
        by_layer.setdefault(layer, []).append((head, kv_of[(layer, head)]))
    allowed: dict[str, torch.Tensor] = {}
    for block in find_attention_blocks(dense_model):
        for sliced in block.sliced_projections():
            shape = (sliced.module.out_features, sliced.module.in_features)
            heads = by_layer.get(block.layer, [])
            allowed[sliced.name] = band_mask(
                shape, sliced.axis, sliced.bands, heads, block.num_heads, slicing
            )
    channels: dict[int, list[int]] = {}
    for row in report.get("selected_mlp_channels") or []:
        channels.setdefault(row["layer"], []).append(row["channel"])
    if channels:
        for mlp in find_mlp_blocks(dense_model, layers=list(channels)):
            for short, name, module in mlp.projections():
                shape = (module.out_features, module.in_features)
                mask = mlp_channel_slices(shape, short, channels[mlp.layer])
                allowed[name] = allowed.get(name, torch.zeros(shape, dtype=torch.bool)) | mask
    return allowed


def _check(dense, pruned, final, report, allowed, structure: str) -> int:
    rows = {row["module"]: row for row in report["restored"]}
    total = 0
    for name, weight in final.items():
        changed = weight != pruned[name]
        count = int(changed.sum())
        if not count:
            if name in rows and rows[name]["restored"]:
                raise ProbeFailure(f"{name}: the report counts {rows[name]['restored']} restored")
            continue
        if name not in allowed:
            raise ProbeFailure(f"{name} changed, but it holds no head slice HSR may restore")
        if not (pruned[name][changed] == 0).all():
            raise ProbeFailure(f"{name}: a weight that survived pruning changed")
        if not torch.equal(weight[changed], dense[name][changed]):
            raise ProbeFailure(f"{name}: a restored weight differs from its dense value")
        if (changed & ~allowed[name]).any():
            raise ProbeFailure(f"{name}: restored outside the selected heads' slices")
        if rows.get(name, {}).get("restored") != count:
            raise ProbeFailure(f"{name}: report says {rows.get(name)}, the tensor {count}")
        if structure == "2:4":
            groups = (weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1)
            if (groups > 2).any():
                raise ProbeFailure(f"{name}: restoration broke the 2:4 pattern")
        total += count
    if report["totals"]["restored"] != total:
        raise ProbeFailure(f"report total {report['totals']['restored']} != measured {total}")
    return total


def probe(
    model_dir: Path, data: dict[str, Path], mode: str, prune_ignore: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run one setting end to end on a saved tiny model and check it; the figures it measured."""
    from hsr_plugin.models import load_model

    fields, pictures, structure = MODES[mode]
    safety = data[f"safety_{pictures}" if pictures else "safety"]
    utility = data[f"utility_{pictures}" if pictures else "utility"]
    hsr = {"num_heads": 2, "safety_data": str(safety), "utility_data": str(utility), "seed": 0}
    hsr.update(fields)
    dense_model = load_model(model_dir, torch.float32)
    dense = _linear_weights(dense_model)
    pruned_model, _ = run_oneshot(
        model_dir, _recipe(structure, None, prune_ignore), data["utility"]
    )
    pruned = _linear_weights(pruned_model)
    del pruned_model
    model, report = run_oneshot(model_dir, _recipe(structure, hsr, prune_ignore), data["utility"])
    final = _linear_weights(model)
    allowed = _allowed_masks(dense_model, report, report["config"]["head_slicing"])
    restored = _check(dense, pruned, final, report, allowed, structure)
    if restored == 0 and structure == "0:0":
        raise ProbeFailure("HSR restored nothing")
    return {
        "restored": restored,
        "selected_heads": report["selected_heads"],
        "layout": report["model"].get("attention_layout"),
        "unsliced": report["model"].get("unsliced_projections", []),
    }
