"""Benchmark: what HSR buys on the organism, against controls, and what it costs.

    PYTHONPATH=. .venv/bin/python integration/bench/bench_hsr.py [--organism text] [--method wanda]

Prints (and writes to outputs/bench/bench_hsr.json):
1. refusal / over-refusal / utility on held-out prompts for dense, pruned, pruned + HSR at several
   `num_heads` and `safety_top`, and a random control that restores the same NUMBER of pruned
   attention weights chosen uniformly at random (same seed);
2. HSR's cost per phase (data, head scoring, neuron scoring, restore), batched against one prompt
   per forward pass (the reference implementation's way).
A benchmark measures; the tests assert. Numbers depend on the machine and the organism.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from integration.organisms.effect import ORGANISMS
from integration.organisms.evaluate_hf import score_heldout

ROOT = Path(__file__).resolve().parents[2]


def _calibration(model_dir: Path, data_dir: Path):
    from transformers import AutoTokenizer

    from hsr_plugin.oneshot_data import conversation_dataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer, conversation_dataset(str(data_dir / "calib_utility.jsonl"), tokenizer, 64, 128)


def run_recipe(model_dir: Path, data_dir: Path, method: str, hsr: dict | None):
    from llmcompressor import oneshot
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM

    from hsr_plugin import HSRModifier
    from hsr_plugin.oneshot_data import single_sample_collator

    tokenizer, dataset = _calibration(model_dir, data_dir)
    cls = WandaPruningModifier if method == "wanda" else SparseGPTModifier
    recipe = [cls(sparsity=0.5, targets=[r"re:.*layers\.\d+$"], ignore=["re:.*lm_head"])]
    if hsr is not None:
        recipe.append(HSRModifier(safety_data=str(data_dir / "calib_safety.jsonl"),
                                  utility_data=str(data_dir / "calib_utility.jsonl"), **hsr))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    model = oneshot(model=model, processor=tokenizer, recipe=recipe, dataset=dataset,
                    data_collator=single_sample_collator, num_calibration_samples=len(dataset),
                    shuffle_calibration_samples=False)
    report = None
    if hsr is not None:
        report = next(m for m in active_session().lifecycle.recipe.modifiers if isinstance(m, HSRModifier)).report
    return model, tokenizer, report


def random_control(pruned, dense, count: int, seed: int = 0):
    """Restore `count` pruned attention weights chosen uniformly at random."""
    keys = [k for k, _ in pruned.named_parameters() if any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    dense_params = dict(dense.named_parameters())
    params = dict(pruned.named_parameters())
    positions = []
    for key in keys:
        mask = (params[key] == 0) & (dense_params[key] != 0)
        positions += [(key, i) for i in mask.flatten().nonzero().flatten().tolist()]
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(positions), generator=generator)[:count].tolist()
    with torch.no_grad():
        for index in chosen:
            key, flat = positions[index]
            params[key].view(-1)[flat] = dense_params[key].view(-1)[flat]
    return pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organism", choices=sorted(ORGANISMS), default="text")
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--safety-top", type=float, nargs="+", default=[0.5, 0.2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, data_dir = ORGANISMS[args.organism]
    rows, costs = [], []

    def record(name, model, tokenizer, report=None):
        scores = score_heldout(model.eval(), tokenizer, data_dir, desc=name).as_dict()
        restored = report["totals"]["restored"] if report else None
        per10k = report["totals"]["restored_per_10k_params"] if report else None
        rows.append({"setting": name, **scores, "restored": restored, "restored_per_10k_params": per10k})
        print(f"{name:28s} refusal {100 * scores['refusal']:5.1f}  over-refusal {100 * scores['over_refusal']:5.1f}  "
              f"utility {100 * scores['utility']:5.1f}  restored {restored if restored is not None else '-'}", flush=True)

    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    record("dense", dense, tokenizer)
    pruned, tokenizer, _ = run_recipe(model_dir, data_dir, args.method, None)
    record(f"{args.method}-0.5", pruned, tokenizer)
    for heads in args.heads:
        for top in args.safety_top:
            model, tokenizer, report = run_recipe(model_dir, data_dir, args.method, {"num_heads": heads, "safety_top": top})
            record(f"+hsr h={heads} q={top}", model, tokenizer, report)
            costs.append({"setting": f"h={heads} q={top}", **report["timing_s"]})
            control, _, _ = run_recipe(model_dir, data_dir, args.method, None)
            record("  random, same count", random_control(control, dense, report["totals"]["restored"]), tokenizer)
    for batch in (1, 8):
        start = time.perf_counter()
        _, _, report = run_recipe(model_dir, data_dir, args.method, {"num_heads": 4, "batch_size": batch})
        costs.append({"setting": f"head scoring batch={batch}", **report["timing_s"],
                      "oneshot_total": round(time.perf_counter() - start, 2)})
    print("\ncost per phase (s):")
    for row in costs:
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    out = ROOT / "outputs" / "bench" / "bench_hsr.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".bench_hsr.json.tmp")
    tmp.write_text(json.dumps({"organism": args.organism, "method": args.method, "rows": rows, "costs": costs}, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
