"""Benchmark: every head-ranking mode against exact Ships, on every model at hand.

    .venv/bin/python -m integration.bench.bench_heads [--models text,vl,qwen] [--prompts 32]

Writes the `bench-heads` block of integration/bench/RESULTS.md and prints it. For each model, in
one run, on the same safety prompts (the organisms' calibration refusals; for organism-qwen, the
real model, the bundled `hsr-safety-mini` that a recipe uses by default):
- exact Ships (`ships_subspace`, every position re-run after the ablated layer): the reference;
- `head_rerun: last_position`: the same score with only the last prompt position re-run, against
  the intact keys and values of the others (hsr_plugin/frozen_context.py);
- `head_score: attribution`: the first-order score (one forward and one backward pass a batch).
Each with its cost in forward-pass equivalents (work over one intact pass of the whole model) and
seconds, and its agreement with exact Ships: how many of exact's top 4, 8 and 10 heads it also
ranks there, and Spearman's rho over all heads. Then, where the cheap mode allows it, how its own
top 10 moves as the prompts grow (16, 32, 64): the point where the ranking stops moving.
Models that are not materialized here (organism-smollm2: `make smollm2`; organism-qwen:
`make real-model`) are skipped and named. A benchmark measures; tests assert.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from hsr_eval.tables import fmt, markdown_table
from integration.bench.bench_hsr import write_results
from integration.bench.bench_scale import _ranking, agreement
from integration.organisms.registry import ORGANISMS

BUNDLED = Path(__file__).resolve().parents[2] / "hsr_plugin" / "data"
BUNDLED_SAFETY = BUNDLED / "hsr-safety-mini.jsonl"
BUNDLED_UTILITY = BUNDLED / "hsr-utility-mini.jsonl"
PRUNING_SAMPLES = 64
MODES = (  # label, head_score, head_rerun
    ("exact Ships", "ships_subspace", "all_positions"),
    ("last position", "ships_subspace", "last_position"),
    ("first order", "attribution", "all_positions"),
)
STABILITY_PROMPTS = (16, 32, 64)


def _safety_file(name: str) -> Path:
    return BUNDLED_SAFETY if name == "qwen" else ORGANISMS[name].data_dir / "calib_safety.jsonl"


def _utility_file(name: str) -> Path:
    return BUNDLED_UTILITY if name == "qwen" else ORGANISMS[name].data_dir / "calib_utility.jsonl"


def pruning_seconds(name: str) -> float:
    """The pruning stage the head ranking sits behind, timed in the same run: llm-compressor's
    Wanda at 50% through `oneshot`, on 64 utility samples, as a user's recipe runs it."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    from hsr_plugin.calibration import load_processor
    from hsr_plugin.models import load_model
    from hsr_plugin.oneshot_data import calibration_kwargs

    folder = ORGANISMS[name].model_dir
    model = load_model(folder, torch.float32).eval()
    processor = load_processor(str(folder))
    calibration = calibration_kwargs(str(_utility_file(name)), processor, PRUNING_SAMPLES, 512)
    recipe = WandaPruningModifier(
        sparsity=0.5,
        targets=[r"re:.*layers\.\d+$"],
        ignore=["re:.*lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"],
    )
    start = time.perf_counter()
    oneshot(model=model, processor=processor, recipe=recipe, **calibration)
    return time.perf_counter() - start


def _setup(name: str, prompts: int):
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.calibration import load_conversations, load_processor, render_samples
    from hsr_plugin.models import load_model

    folder = ORGANISMS[name].model_dir
    model = load_model(folder, torch.float32).eval()
    processor = load_processor(str(folder))
    conversations = load_conversations(str(_safety_file(name)), prompts, 0)
    samples = render_samples(conversations, processor, 512)
    pad = getattr(processor, "tokenizer", processor).pad_token_id or 0
    return model, find_attention_blocks(model), samples, pad


def _score(model, blocks, samples, pad, head_score, rerun):
    from hsr_plugin.attribution import AttributionCost, score_heads

    cost = AttributionCost()
    start = time.perf_counter()
    scores = score_heads(
        model, blocks, samples, head_score, batch_size=8, pad_id=pad, progress=True, cost=cost,
        rerun=rerun,
    )  # fmt: skip
    return scores, cost.forward_equivalents, time.perf_counter() - start


def measure(name: str, prompts: int, stability: bool) -> dict:
    pruning = pruning_seconds(name)
    print(f"{name} Wanda 50% pruning stage: {pruning:.1f} s", flush=True)
    model, blocks, samples, pad = _setup(name, prompts)
    rows, exact = [], None
    for label, head_score, rerun in MODES:
        scores, fpe, seconds = _score(model, blocks, samples, pad, head_score, rerun)
        exact = exact or (scores, fpe, seconds)
        rows.append(
            {
                "mode": label,
                "fpe": fpe,
                "seconds": seconds,
                "fpe_ratio": fpe / exact[1],
                "seconds_ratio": seconds / exact[2],
                "pruning_ratio": seconds / pruning,
                **agreement(scores, exact[0]),
            }
        )
        print(f"{name} {label}: {seconds:.1f} s, {fpe:.1f} fpe, {rows[-1]['top']}", flush=True)
    result = {
        "model": name,
        "layers": len(blocks),
        "heads": sum(b.num_heads for b in blocks),
        "prompts": len(samples),
        "mean_prompt_tokens": sum(s.prompt_length for s in samples) / len(samples),
        "rows": rows,
        "pruning_s": pruning,
    }
    if stability:
        tops = {}
        for count in STABILITY_PROMPTS:
            model, blocks, subset, pad = _setup(name, count)
            scores, _, _ = _score(model, blocks, subset, pad, "ships_subspace", "last_position")
            tops[len(subset)] = _ranking(scores)[:10]
        largest = tops[max(tops)]
        result["stability"] = {n: len(set(top) & set(largest)) for n, top in tops.items()}
    return result


def render(results: list[dict], skipped: list[str], seconds: float) -> str:
    lines = [
        "Generated by `python -m integration.bench.bench_heads` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {seconds:.0f} s in all).",
        "",
        "Head ranking modes against exact Ships (`ships_subspace`, every position re-run), on "
        "the same safety prompts, in one run per model. fpe: forward-pass equivalents (work "
        "over one intact pass of the whole model over the prompts); top-k: how many of exact "
        "Ships' top k heads the mode also ranks in its top k; rho: Spearman's rho over all "
        "heads; s / pruning: seconds over the model's own pruning stage (llm-compressor's "
        f"Wanda 50% through `oneshot`, {PRUNING_SAMPLES} utility samples), timed in the same run.",
        "",
    ]
    headers = ["model", "mode", "fpe", "fpe / exact", "s", "s / exact", "s / pruning"]
    headers += ["top-4", "top-8", "top-10", "rho"]
    table = []
    for r in results:
        what = (
            f"{r['model']} ({r['layers']} x {r['heads'] // r['layers']} heads, {r['prompts']} "
            f"prompts of {r['mean_prompt_tokens']:.0f} tokens)"
        )
        for row in r["rows"]:
            top = row["top"]
            table.append(
                [what, row["mode"], fmt(row["fpe"]), f"{row['fpe_ratio']:.3f}",
                 fmt(row["seconds"]), f"{row['seconds_ratio']:.3f}", f"{row['pruning_ratio']:.2f}",
                 *(f"{top.get(k, 'n/a')}/{k}" for k in (4, 8, 10)), f"{row['rho']:.3f}"]
            )  # fmt: skip
    lines.append(markdown_table(headers, table, numeric_from=2))
    stable = [r for r in results if "stability" in r]
    if stable:
        lines += [
            "",
            "How `last position`'s own top 10 moves with the number of prompts: heads shared "
            "with its top 10 at the most prompts.",
            "",
        ]
        counts = sorted({n for r in stable for n in r["stability"]})
        rows = [
            [r["model"], *(f"{r['stability'].get(n, 'n/a')}/10" for n in counts)] for r in stable
        ]
        lines.append(markdown_table(["model", *(f"{n} prompts" for n in counts)], rows))
    if skipped:
        lines += ["", "Not materialized here, so not measured: " + ", ".join(skipped) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="text,vl,smollm2,qwen")
    parser.add_argument(
        "--prompts", type=int, default=32, help="safety prompts per model (default 32)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in ORGANISMS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(ORGANISMS)})")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    results, skipped = [], []
    for name in names:
        if not (ORGANISMS[name].model_dir / "config.json").is_file():
            skipped.append(f"organism-{name}")
            continue
        results.append(measure(name, args.prompts, stability=name == "qwen"))
    body = render(results, skipped, time.monotonic() - started)
    print("\n" + body)
    write_results("bench-heads", body)


if __name__ == "__main__":
    main()
