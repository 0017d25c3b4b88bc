"""Benchmark: what HSR wins back on an organism, against controls, and what it costs.

    .venv/bin/python -m integration.bench.bench_hsr [--organism text] [--method wanda]

Writes integration/bench/RESULTS.md (a generated block per organism and method) and prints it:
1. refusal / over-refusal / utility on the held-out prompts, from the one scorer (the hsr_safety
   lm-eval tasks run in-process), for dense, pruned, and pruned + HSR with the paper's Wanda
   neuron scores and with SNIP; beside each HSR row, a random control that restores the same
   number of pruned attention weights chosen uniformly (same seed), and the ceiling that restores
   every pruned attention weight. RSR = (refusal_hsr - refusal_pruned) / (refusal_dense -
   refusal_pruned), refusal being 1 - ASR;
2. HSR's cost per phase, from the report, with head scoring batched against one prompt per
   forward pass (the reference implementation's way), as ratios measured in the same run.
A benchmark measures; the tests assert. Numbers depend on the machine and the organism.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from hsr_eval.files import replace_generated_block, write_text_atomic
from hsr_eval.outcomes import counted_summary
from hsr_eval.tables import (
    INTERVALS_NOTE,
    SAFETY_HEADERS,
    fmt,
    markdown_table,
    percent,
    safety_cells,
)
from hsr_eval.tasks.in_process import TEXT_TASKS, score_model
from integration.organisms.registry import ORGANISMS, Organism

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def run_recipe(organism: Organism, method: str, hsr: dict | None, sparsity: float = 0.5):
    """(model, processor, HSR report or None) of one `oneshot` run: prune, then maybe HSR.

    The language model's decoder layers are pruned; a VLM's vision tower and projector are not
    (as in `integration/organisms/effect.py`)."""
    from llmcompressor import oneshot
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    from hsr_plugin import HSRModifier
    from hsr_plugin.oneshot_data import calibration_kwargs
    from integration.organisms.effect import PRUNE_IGNORE, load

    model, processor = load(organism.model_dir)
    calib = str(organism.data_dir / "calib_utility.jsonl")
    calibration = calibration_kwargs(calib, processor, 64, 128)
    cls = WandaPruningModifier if method == "wanda" else SparseGPTModifier
    recipe = [cls(sparsity=sparsity, targets=[r"re:.*layers\.\d+$"], ignore=PRUNE_IGNORE)]
    if hsr is not None:
        safety = str(organism.data_dir / "calib_safety.jsonl")
        recipe.append(HSRModifier(safety_data=safety, utility_data=calib, **hsr))
    torch.manual_seed(0)
    model = oneshot(
        model=model,
        processor=processor,
        recipe=recipe,
        shuffle_calibration_samples=False,
        **calibration,
    )
    report = None
    if hsr is not None:
        modifiers = active_session().lifecycle.recipe.modifiers
        report = next(m for m in modifiers if isinstance(m, HSRModifier)).report
    return model, processor, report


def pruned_positions(pruned, dense, scope: tuple[str, ...] | None = ATTENTION) -> list:
    """(parameter, flat index) of every weight pruning zeroed in the language model's decoder
    layers whose name contains one of `scope` (every one of them: None)."""
    from hsr_eval.language_weights import is_language_weight

    dense_params = dict(dense.named_parameters())
    positions = []
    for key, param in pruned.named_parameters():
        if is_language_weight(key) and (scope is None or any(p in key for p in scope)):
            mask = (param == 0) & (dense_params[key] != 0)
            positions += [(key, i) for i in mask.flatten().nonzero().flatten().tolist()]
    return positions


@torch.no_grad()
def restore_positions(pruned, dense, positions: list[tuple[str, int]]):
    """A copy of `pruned` with the dense values put back at `positions`."""
    model = copy.deepcopy(pruned)
    params, dense_params = dict(model.named_parameters()), dict(dense.named_parameters())
    for key, flat in positions:
        params[key].view(-1)[flat] = dense_params[key].view(-1)[flat]
    return model


def random_positions(all_positions: list, count: int, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(all_positions), generator=generator)[:count].tolist()
    return [all_positions[i] for i in chosen]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organism", choices=["text", "smollm2"], default="text")
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--heads", type=int, default=8, help="HSRModifier.num_heads (default 8)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from integration.organisms.effect import load

    organism = ORGANISMS[args.organism]
    metadata = {"data_dir": str(organism.eval_dir)}
    rows: list[dict] = []
    started = time.monotonic()

    def record(name: str, model, tokenizer, restored: int | None = None) -> dict:
        scores = counted_summary(score_model(model, tokenizer, TEXT_TASKS, metadata, desc=name))
        row = {"setting": name, **scores, "restored": restored}
        rows.append(row)
        print(
            f"{name:34s} refusal {percent(scores['refusal']):>5}  over-refusal "
            f"{percent(scores['over_refusal']):>5}  utility {percent(scores['utility']):>5}  "
            f"restored {restored if restored is not None else '-'}",
            flush=True,
        )
        return row

    dense, _ = load(organism.model_dir)
    pruned, tokenizer, _ = run_recipe(organism, args.method, None)
    record("dense", dense, tokenizer)
    record(f"{args.method} 50%", pruned, tokenizer)
    attention = pruned_positions(pruned, dense, ATTENTION)
    reports = {}
    for neuron in ("wanda", "snip"):
        model, _, report = run_recipe(
            organism, args.method, {"num_heads": args.heads, "neuron_score": neuron}
        )
        reports[neuron] = report
        count = report["totals"]["restored"]
        record(f"+ HSR h={args.heads}, {neuron} scores", model, tokenizer, count)
        control = restore_positions(pruned, dense, random_positions(attention, count))
        record("  random attention weights, same count", control, tokenizer, count)
    ceiling = restore_positions(pruned, dense, attention)
    record("every pruned attention weight", ceiling, tokenizer, len(attention))

    costs = []
    for batch in (1, 8):
        start = time.perf_counter()
        _, _, report = run_recipe(
            organism, args.method, {"num_heads": args.heads, "batch_size": batch}
        )
        costs.append({"batch": batch, "oneshot": time.perf_counter() - start, **report["timing_s"]})

    body = render(args, rows, costs, time.monotonic() - started)
    print("\n" + body)
    write_results(f"bench-{args.organism}-{args.method}", body)


def render(args, rows: list[dict], costs: list[dict], seconds: float) -> str:
    dense, pruned = rows[0], rows[1]
    table = markdown_table(
        ["setting", *SAFETY_HEADERS, "restored"],
        [
            [
                r["setting"],
                *safety_cells(r, dense, pruned, reference=i < 2),
                "" if r["restored"] is None else r["restored"],
            ]
            for i, r in enumerate(rows)
        ],
    )
    slow, fast = costs
    phases = [k for k in fast if k not in ("batch",)]
    cost = markdown_table(
        ["phase", "s, 1 prompt per pass", f"s, {fast['batch']} per pass", "ratio"],
        [
            [
                k,
                fmt(slow.get(k), 2),
                fmt(fast.get(k), 2),
                fmt(fast[k] / slow[k], 2) if slow.get(k) else "n/a",
            ]
            for k in phases
        ],
    )
    return "\n".join(
        [
            f"**organism-{args.organism}, {args.method} 50%, HSR with {args.heads} heads** "
            "(held-out prompts, the one scorer)",
            "",
            table,
            "",
            INTERVALS_NOTE,
            "",
            "HSR cost per phase (seconds, from the report; `oneshot` is the whole run with "
            "pruning):",
            "",
            cost,
            "",
            f"_Generated by `python -m integration.bench.bench_hsr --organism {args.organism} "
            "--method "
            f"{args.method}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{torch.get_num_threads()} torch thread(s), in {seconds:.0f} s._",
        ]
    )


def write_results(name: str, body: str) -> None:
    if not RESULTS.is_file():
        write_text_atomic(
            RESULTS, "# Benchmark results\n\nWritten by the scripts in this folder.\n"
        )
    if f"<!-- {name}:begin -->" not in RESULTS.read_text():
        write_text_atomic(
            RESULTS, RESULTS.read_text() + f"\n<!-- {name}:begin -->\n<!-- {name}:end -->\n"
        )
    replace_generated_block(RESULTS, name, body)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
