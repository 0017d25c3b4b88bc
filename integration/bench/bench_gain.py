"""Benchmark: more safety per restored weight (restore_gain, the budget, MLP realignment).

    .venv/bin/python -m integration.bench.bench_gain [--prunings wanda:0.5,sparsegpt:0.6]
    .venv/bin/python -m integration.bench.bench_gain --organism vl --prunings wanda:0.5

Writes the `bench-gain` block (organism-text; `bench-gain-vl` for organism-vl, scored on the
picture tasks) of integration/bench/RESULTS.md and prints it. For each pruning, at the paper
default's restored count K (HSR h=8 with Wanda scores) and at fractions and multiples of it,
every row scored by the one scorer on the held-out prompts:
- the paper's neuron scores (Wanda, SNIP) and `restore_gain`, all capped by the same budget, with
  the exact (Ships) heads and with first-order (`attribution`) heads;
- `restore_gain` with `units: [heads, mlp]` at K and at 2K;
- `restore_gain` without the head restriction: every pruned attention weight, then every pruned
  weight, ranked by the same first-order gain, at the same budgets;
- the random control (pruned attention weights, uniform, same count) and three ceilings: every
  pruned weight in the selected heads, every pruned attention weight, every pruned weight;
- where the damage sits: every pruned MLP weight restored, and every pruned weight of one
  decoder layer at a time.
RSR = (refusal - refusal_pruned) / (refusal_dense - refusal_pruned).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hsr_eval.outcomes import counted_summary
from hsr_eval.tables import INTERVALS_NOTE, SAFETY_HEADERS, markdown_table, percent, safety_cells
from hsr_eval.tasks.in_process import TEXT_TASKS, VISION_TASKS, score_model
from integration.bench.bench_hsr import (
    ATTENTION,
    pruned_positions,
    random_positions,
    restore_positions,
    run_recipe,
    write_results,
)
from integration.organisms.registry import ORGANISMS, Organism

HEADS = 8
MLP = ("gate_proj", "up_proj", "down_proj")


def gain_positions(pruned, dense, samples, scope: tuple[str, ...] | None, count: int) -> list:
    """The `count` pruned weights with the largest first-order safety gain on the pruned model,
    among the decoder's Linear layers whose name contains one of `scope` (all of them: None),
    without utility harm: restore_gain's rule, minus the head restriction."""
    from hsr_eval.language_weights import is_language_weight
    from hsr_plugin.neuron_scoring import mean_weight_gradients
    from hsr_plugin.restore import budget_masks
    from hsr_plugin.selection import pruned_mask, restore_gains

    modules = {
        name: module
        for name, module in pruned.named_modules()
        if isinstance(module, torch.nn.Linear)
        and is_language_weight(f"{name}.weight")
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


def measure(
    organism: Organism, method: str, sparsity: float, dense, processor, samples
) -> tuple[int, list[dict]]:
    """Every row of one pruning's table; returns (K, rows)."""
    tasks = VISION_TASKS if organism.vision else TEXT_TASKS
    metadata = {"data_dir": str(organism.eval_dir)}
    rows: list[dict] = []

    def record(name, model, restored=None, seconds=None):
        scores = counted_summary(score_model(model, processor, tasks, metadata, desc=name))
        rows.append({"setting": name, **scores, "restored": restored, "seconds": seconds})
        print(
            f"{method} {sparsity}: {name:48s} refusal {percent(scores['refusal'])} "
            f"over-refusal {percent(scores['over_refusal'])} "
            f"utility {percent(scores['utility'])} restored {restored}",
            flush=True,
        )

    def hsr(name, fields):
        model, _, report = run_recipe(organism, method, fields, sparsity)
        record(name, model, report["totals"]["restored"], sum(report["timing_s"].values()))
        return report

    def restored(name, positions, seconds=None):
        record(name, restore_positions(pruned, dense, positions), len(positions), seconds)

    pruned, _, _ = run_recipe(organism, method, None, sparsity)
    record("dense", dense)
    record(f"{method} {sparsity:.0%}", pruned)
    paper = hsr(f"HSR h={HEADS}, wanda scores (paper default)", {"num_heads": HEADS})
    count, params = paper["totals"]["restored"], paper["totals"]["language_params"]

    def capped(k: int, **fields) -> dict:
        return {"num_heads": HEADS, "max_restored_per_10k": k * 1e4 / params, **fields}

    attention = pruned_positions(pruned, dense, ATTENTION)
    restored("  random pruned attention weights, K", random_positions(attention, count))
    hsr(f"HSR h={HEADS}, snip scores, budget K", capped(count, neuron_score="snip"))
    for label, k in (("K", count), ("K/4", count // 4), ("K/10", count // 10)):
        hsr(f"restore_gain h={HEADS}, budget {label}", capped(k, neuron_score="restore_gain"))
    hsr(
        f"restore_gain h={HEADS}, first-order heads, budget K",
        capped(count, neuron_score="restore_gain", head_score="attribution"),
    )
    hsr(
        f"HSR h={HEADS}, first-order heads, wanda scores, budget K",
        capped(count, head_score="attribution"),
    )
    for label, k in (("K", count), ("2K", 2 * count)):
        hsr(
            f"restore_gain h={HEADS} + 64 MLP channels, budget {label}",
            capped(k, neuron_score="restore_gain", units=["heads", "mlp"]),
        )
    scopes = (("every pruned attention weight", ATTENTION), ("every pruned weight", None))
    for label, k in (("K", count), ("K/4", count // 4)):
        for scope_name, scope in scopes:
            start = time.perf_counter()
            positions = gain_positions(pruned, dense, samples, scope, k)
            restored(
                f"restore_gain over {scope_name}, budget {label}",
                positions,
                time.perf_counter() - start,
            )
    hsr(
        f"every pruned weight in the {HEADS} heads (ceiling)",
        {"num_heads": HEADS, "safety_top": 1.0, "utility_top": 0.0, "utility_max": 1.0},
    )
    restored("every pruned attention weight (ceiling)", attention)
    restored(
        "every pruned MLP weight (where the damage sits)", pruned_positions(pruned, dense, MLP)
    )
    everything = pruned_positions(pruned, dense, None)
    restored("every pruned weight (ceiling: dense)", everything)
    layers = sorted({int(key.split(".layers.")[1].split(".")[0]) for key, _ in everything})
    for layer in layers:
        inside = [(key, i) for key, i in everything if f".layers.{layer}." in key]
        restored(f"every pruned weight of layer {layer} (where the damage sits)", inside)
    return count, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organism", choices=["text", "vl"], default="text")
    parser.add_argument("--prunings", default="wanda:0.5,sparsegpt:0.6")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from hsr_plugin.calibration import render_samples
    from hsr_plugin.conversations import load_conversations
    from integration.organisms.effect import load

    organism = ORGANISMS[args.organism]
    started = time.monotonic()
    dense, processor = load(organism.model_dir)
    dense.eval()
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
        count, rows = measure(organism, method, float(sparsity), dense, processor, samples)
        blocks.append(render(organism, method, float(sparsity), count, rows))
    organism_flag = "" if args.organism == "text" else f" --organism {args.organism}"
    body = "\n\n".join([*blocks, INTERVALS_NOTE]) + (
        f"\n\n_Generated by `python -m integration.bench.bench_gain{organism_flag} --prunings "
        f"{args.prunings}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s), in {time.monotonic() - started:.0f} s. K is "
        "the paper default's restored count; restore_gain runs with utility_tolerance 0 (no "
        "first-order utility harm); the last column is HSR's stage time from its report, or the "
        "gain scoring time._"
    )
    print("\n" + body)
    write_results("bench-gain" if args.organism == "text" else f"bench-gain-{args.organism}", body)


def render(organism: Organism, method: str, sparsity: float, count: int, rows: list[dict]) -> str:
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
        f"**organism-{organism.name}, {method} {sparsity:.0%}, K = {count}** (held-out "
        f"{'pictures, the picture tasks' if organism.vision else 'prompts'}, the one scorer)"
        f"\n\n{table}"
    )


if __name__ == "__main__":
    main()
