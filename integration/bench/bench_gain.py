"""Benchmark: more safety per restored weight (restore_gain, the budget, MLP realignment).

    .venv/bin/python -m integration.bench.bench_gain [--prunings wanda:0.5,sparsegpt:0.6]

Writes the `bench-gain` block of integration/bench/RESULTS.md and prints it. On organism-text,
for each pruning, at the paper default's restored count K (HSR h=8 with Wanda scores) and at
fractions and multiples of it, every row scored by the one scorer on the held-out prompts:
- the paper's neuron scores (Wanda, SNIP) and `restore_gain`, all capped by the same budget;
- `restore_gain` with `units: [heads, mlp]` at 2K;
- `restore_gain` without the head restriction: every pruned attention weight, then every pruned
  weight, ranked by the same first-order gain, at the same budgets;
- the random control (pruned attention weights, uniform, same count) and two ceilings: every
  pruned weight in the selected heads, every pruned attention weight.
RSR = (refusal - refusal_pruned) / (refusal_dense - refusal_pruned).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hsr_eval.outcomes import counted_summary
from hsr_eval.tables import INTERVALS_NOTE, SAFETY_HEADERS, markdown_table, percent, safety_cells
from hsr_eval.tasks.in_process import TEXT_TASKS, score_model
from integration.bench.bench_hsr import (
    ATTENTION,
    pruned_attention_positions,
    random_positions,
    restore_positions,
    run_recipe,
    write_results,
)
from integration.organisms.registry import ORGANISMS

HEADS = 8


def gain_positions(pruned, dense, samples, scope: tuple[str, ...] | None, count: int) -> list:
    """The `count` pruned weights with the largest first-order safety gain on the pruned model,
    among the decoder's Linear layers whose name contains one of `scope` (all of them: None),
    without utility harm: restore_gain's rule, minus the head restriction."""
    from hsr_plugin.neuron_scoring import mean_weight_gradients
    from hsr_plugin.restore import budget_masks
    from hsr_plugin.selection import pruned_mask, restore_gains

    modules = {
        name: module
        for name, module in pruned.named_modules()
        if isinstance(module, torch.nn.Linear)
        and ".layers." in name
        and (scope is None or any(s in name for s in scope))
    }
    safety, utility = samples
    g_s = mean_weight_gradients(pruned, modules, safety, "gain (safety)", progress=False)
    g_u = mean_weight_gradients(pruned, modules, utility, "gain (utility)", progress=False)
    dense_modules = dict(dense.named_modules())
    masks, gains = {}, {}
    for name, module in modules.items():
        dense_weight = dense_modules[name].weight.detach()
        gain, harm = restore_gains(dense_weight, g_s[name], g_u[name])
        masks[name] = pruned_mask(module.weight.detach(), dense_weight) & (gain > 0) & (harm <= 0)
        gains[name] = gain.float()
    kept = budget_masks(masks, gains, count)
    return [
        (f"{name}.weight", flat)
        for name, mask in kept.items()
        for flat in mask.flatten().nonzero().flatten().tolist()
    ]


def measure(method: str, sparsity: float, dense, processor, samples) -> tuple[int, list[dict]]:
    """Every row of one pruning's table; returns (K, rows)."""
    organism = ORGANISMS["text"]
    metadata = {"data_dir": str(organism.data_dir)}
    rows: list[dict] = []

    def record(name, model, restored=None, seconds=None):
        scores = counted_summary(score_model(model, processor, TEXT_TASKS, metadata, desc=name))
        rows.append({"setting": name, **scores, "restored": restored, "seconds": seconds})
        print(
            f"{method} {sparsity}: {name:48s} refusal {percent(scores['refusal'])} "
            f"utility {percent(scores['utility'])} restored {restored}",
            flush=True,
        )

    def hsr(name, fields):
        model, _, report = run_recipe(organism, method, fields, sparsity)
        record(name, model, report["totals"]["restored"], sum(report["timing_s"].values()))
        return report

    pruned, _, _ = run_recipe(organism, method, None, sparsity)
    record("dense", dense)
    record(f"{method} {sparsity:.0%}", pruned)
    paper = hsr(f"HSR h={HEADS}, wanda scores (paper default)", {"num_heads": HEADS})
    count, params = paper["totals"]["restored"], paper["totals"]["language_params"]

    def capped(k: int, **fields) -> dict:
        return {"num_heads": HEADS, "max_restored_per_10k": k * 1e4 / params, **fields}

    attention = pruned_attention_positions(pruned, dense)
    control = restore_positions(pruned, dense, random_positions(attention, count))
    record("  random pruned attention weights, K", control, count)
    hsr(f"HSR h={HEADS}, snip scores, budget K", capped(count, neuron_score="snip"))
    for label, k in (("K", count), ("K/4", count // 4), ("K/10", count // 10)):
        hsr(f"restore_gain h={HEADS}, budget {label}", capped(k, neuron_score="restore_gain"))
    hsr(
        f"restore_gain h={HEADS} + 64 MLP channels, budget 2K",
        capped(2 * count, neuron_score="restore_gain", units=["heads", "mlp"]),
    )
    scopes = (("every pruned attention weight", ATTENTION), ("every pruned weight", None))
    for label, k in (("K", count), ("K/4", count // 4)):
        for scope_name, scope in scopes:
            start = time.perf_counter()
            positions = gain_positions(pruned, dense, samples, scope, k)
            seconds = time.perf_counter() - start
            model = restore_positions(pruned, dense, positions)
            record(
                f"restore_gain over {scope_name}, budget {label}", model, len(positions), seconds
            )
    hsr(
        f"every pruned weight in the {HEADS} heads (ceiling)",
        {"num_heads": HEADS, "safety_top": 1.0, "utility_top": 0.0, "utility_max": 1.0},
    )
    ceiling = restore_positions(pruned, dense, attention)
    record("every pruned attention weight (ceiling)", ceiling, len(attention))
    return count, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prunings", default="wanda:0.5,sparsegpt:0.6")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    from hsr_plugin.calibration import load_conversations, load_processor, render_samples

    organism = ORGANISMS["text"]
    started = time.monotonic()
    dense = AutoModelForCausalLM.from_pretrained(organism.model_dir, dtype=torch.float32).eval()
    processor = load_processor(str(organism.model_dir))
    samples = tuple(
        render_samples(
            load_conversations(str(organism.data_dir / f"calib_{name}.jsonl"), 128, 0),
            processor,
            512,
        )
        for name in ("safety", "utility")
    )
    blocks = []
    for spec in args.prunings.split(","):
        method, sparsity = spec.split(":")
        count, rows = measure(method, float(sparsity), dense, processor, samples)
        blocks.append(render(method, float(sparsity), count, rows))
    body = "\n\n".join([*blocks, INTERVALS_NOTE]) + (
        f"\n\n_Generated by `python -m integration.bench.bench_gain --prunings {args.prunings}` "
        f"on {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s), in {time.monotonic() - started:.0f} s. K is the paper default's restored "
        "count; restore_gain runs with utility_tolerance 0 (no first-order utility harm); the "
        "last column is HSR's stage time from its report, or the gain scoring time._"
    )
    print("\n" + body)
    write_results("bench-gain", body)


def render(method: str, sparsity: float, count: int, rows: list[dict]) -> str:
    dense, pruned = rows[0], rows[1]
    table = markdown_table(
        ["setting", "restored", *SAFETY_HEADERS, "utility vs pruned", "HSR / scoring s"],
        [
            [
                r["setting"],
                "" if r["restored"] is None else r["restored"],
                *safety_cells(r, dense, pruned, reference=i < 2),
                f"{100 * (r['utility'] - pruned['utility']):+.1f}" if i > 1 else "",
                "" if r["seconds"] is None else f"{r['seconds']:.1f}",
            ]
            for i, r in enumerate(rows)
        ],
    )
    return (
        f"**organism-text, {method} {sparsity:.0%}, K = {count}** (held-out prompts, the one "
        f"scorer)\n\n{table}"
    )


if __name__ == "__main__":
    main()
