"""Benchmark: every head-ranking mode against exact Ships, on every model at hand.

    .venv/bin/python -m integration.bench.bench_heads [--models text,vl,qwen] [--prompts 32]

Writes the `bench-heads` block of integration/bench/RESULTS.md and prints it. For each model, in
one run, on the same safety prompts (the organisms' calibration refusals; for organism-qwen, the
real model, the bundled `hsr-safety-mini` that a recipe uses by default):
- exact Ships (`ships_subspace`, every position re-run after the ablated layer): the reference;
- `head_rerun: last_position`: the same score with only the last prompt position re-run, against
  the intact keys and values of the others (hsr_plugin/frozen_context.py);
- `head_rerun: screened`: the last position screens every head, then exact Ships re-scores the
  top 30 (3 x 10) and the top 10 is chosen among them;
- `head_score: attribution`: the first-order score (one forward and one backward pass a batch).
- `head_prompts: adaptive` over the last-position score: given the whole safety set, it stops
  once its top 10 has come out the same 4 rounds of 8 prompts in a row.
Each with its cost in forward-pass equivalents (work over one intact pass of the whole model over
exact's prompts) and seconds, and its agreement with exact Ships: how many of exact's top 4, 8
and 10 heads it also ranks there, and Spearman's rho over all heads. Then how the top 10 of exact
and of the last-position score over the whole set settle, round by round: the point where the
ranking stops moving. Last, each mode's cost extrapolated to the 7B and 72B shapes.
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
from integration.bench.bench_scale import agreement
from integration.organisms.registry import ORGANISMS

BUNDLED = Path(__file__).resolve().parents[2] / "hsr_plugin" / "data"
BUNDLED_SAFETY = BUNDLED / "hsr-safety-mini.jsonl"
BUNDLED_UTILITY = BUNDLED / "hsr-utility-mini.jsonl"
PRUNING_SAMPLES = 64
PARETO = Path(__file__).resolve().parent / "heads_pareto.svg"
MODES = (  # label, head_score, head_rerun, adaptive (reads the whole set, stops when settled)
    ("exact Ships", "ships_subspace", "all_positions", False),
    ("last position", "ships_subspace", "last_position", False),
    ("screened", "ships_subspace", "screened", False),
    ("first order", "attribution", "all_positions", False),
    ("last position, adaptive", "ships_subspace", "last_position", True),
)
TOP = 10  # the top set the agreement and the adaptive stop watch
SCREEN = 3 * TOP  # heads a screen verifies: `head_screen_factor`'s default x 10 heads
ROUND = 8  # prompts per round: the batch size, as `head_prompts: adaptive` uses it
STABLE_ROUNDS = 3  # `head_stable_rounds`' default
NEVER = 10**9  # a stop that never comes: records the top set round by round
# the shapes the cost is extrapolated to: layers, heads per layer, hidden size
SHAPES = (("7B (32 x 32, d 4096)", 32, 32), ("72B (80 x 64, d 8192)", 80, 64))


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


def _setup(name: str):
    """The model, its attention blocks, its processor and its pad id."""
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.models import load_model

    folder = ORGANISMS[name].model_dir
    model = load_model(folder, torch.float32).eval()
    processor = load_processor(str(folder))
    pad = getattr(processor, "tokenizer", processor).pad_token_id or 0
    return model, find_attention_blocks(model), processor, pad


def _prompts(name: str, processor, count: int | None):
    """`count` safety prompts (None: the whole set), rendered."""
    from hsr_plugin.calibration import render_samples
    from hsr_plugin.conversations import load_conversations

    return render_samples(load_conversations(str(_safety_file(name)), count, 0), processor, 512)


def _score(model, blocks, samples, pad, head_score, rerun, stable_rounds=None):
    """Scores, cost and seconds; with `stable_rounds`, through the adaptive stop (NEVER: read
    every prompt, recording the top set round by round)."""
    from hsr_plugin.exact_head_scores import AdaptiveStop, score_heads
    from hsr_plugin.score_records import AttributionCost

    stop = None
    if stable_rounds is not None and head_score != "attribution":
        stop = AdaptiveStop(TOP, stable_rounds, ROUND)
    cost = AttributionCost()
    start = time.perf_counter()
    scores = score_heads(
        model, blocks, samples, head_score, batch_size=ROUND, pad_id=pad, progress=True,
        cost=cost, rerun=rerun, stop=stop, screen=SCREEN if rerun == "screened" else None,
    )  # fmt: skip
    return scores, cost, time.perf_counter() - start


def _settling(rounds: list) -> dict[int, int]:
    """Per round, how many of the final round's top 10 it already had."""
    final = set(rounds[-1][1])
    return {n: len(set(top) & final) for n, top in rounds}


def measure(name: str, prompts: int) -> dict:
    pruning = pruning_seconds(name)
    print(f"{name} Wanda 50% pruning stage: {pruning:.1f} s", flush=True)
    model, blocks, processor, pad = _setup(name)
    samples, everything = _prompts(name, processor, prompts), _prompts(name, processor, None)
    rows, exact, settling = [], None, {}
    for label, head_score, rerun, adaptive in MODES:
        given = everything if adaptive else samples
        rounds = STABLE_ROUNDS if adaptive else NEVER
        scores, cost, seconds = _score(model, blocks, given, pad, head_score, rerun, rounds)
        fpe = cost.forward_equivalents
        if adaptive:  # its unit is a pass over the whole set: restate it over exact's prompts
            fpe *= cost.unit / exact[1].unit
        exact = exact or (scores, cost, seconds, fpe)
        if cost.rounds and not adaptive:
            settling[label] = _settling(cost.rounds)
        rows.append(
            {
                "mode": label,
                "prompts": f"{cost.prompts} of {len(given)}",
                "fpe": fpe,
                "seconds": seconds,
                "fpe_ratio": fpe / exact[3],
                "seconds_ratio": seconds / exact[2],
                "pruning_ratio": seconds / pruning,
                **agreement(scores, exact[0]),
            }
        )
        print(f"{name} {label}: {seconds:.1f} s, {fpe:.1f} fpe, {rows[-1]['top']}", flush=True)
    # the cheap mode over the whole set, its top 10 recorded round by round
    _, cost, _ = _score(model, blocks, everything, pad, "ships_subspace", "last_position", NEVER)
    settling[f"last position, all {len(everything)}"] = _settling(cost.rounds)
    return {
        "model": name,
        "layers": len(blocks),
        "heads": sum(b.num_heads for b in blocks),
        "prompts": len(samples),
        "mean_prompt_tokens": sum(s.prompt_length for s in samples) / len(samples),
        "rows": rows,
        "pruning_s": pruning,
        "pruning_fpe": pruning / (exact[2] / exact[3]),  # the pruning stage in exact's fpe
        "settling": settling,
    }


def extrapolate(result: dict) -> list[list[str]]:
    """Each mode's forward-pass equivalents at a larger shape, from the counts that give them:
    exact re-runs the T prompt positions through the L - l layers after each head of layer l,
    so 1 + H (L + 1) / 2 intact passes; last position re-runs one position of T, so
    1 + H (L + 1) / (2 T_eff), with T_eff read off this model's measured fpe (it folds in the
    padding); first order is a fixed number of passes whatever the shape; the adaptive mode
    costs what it measured here against last position. Over the pruning stage: the pruning stage's
    measured cost in the same fpe, taken to scale as a forward pass does."""
    layers, heads = result["layers"], result["heads"] // result["layers"]
    by_mode = {r["mode"]: r for r in result["rows"]}
    tail = heads * (layers + 1) / 2  # the ablated tails of one exact run, in intact passes
    t_eff = tail / max(by_mode["last position"]["fpe"] - 1.0, 1e-9)
    adaptive_share = by_mode["last position, adaptive"]["fpe"] / by_mode["last position"]["fpe"]
    verification = by_mode["screened"]["fpe"] - by_mode["last position"]["fpe"]
    table = []
    for shape, big_layers, big_heads in SHAPES:
        big_tail = big_heads * (big_layers + 1) / 2
        fpe = {
            "exact Ships": 1 + big_tail,
            "last position": 1 + big_tail / t_eff,
            # the verification re-runs SCREEN heads' tails at every position: the same passes
            # whatever the shape, for heads at the same relative depth
            "screened": 1 + big_tail / t_eff + verification,
            "first order": by_mode["first order"]["fpe"],
            "last position, adaptive": (1 + big_tail / t_eff) * adaptive_share,
        }
        for mode, value in fpe.items():
            table.append([shape, mode, fmt(value), f"{value / result['pruning_fpe']:.2f}"])
    return table


def render(results: list[dict], skipped: list[str], seconds: float) -> str:
    lines = [
        "Generated by `python -m integration.bench.bench_heads` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {seconds:.0f} s in all).",
        "",
        "Head ranking modes against exact Ships (`ships_subspace`, every position re-run), in "
        "one run per model. prompts: safety prompts read, of those given (the adaptive mode "
        f"is given the whole set and stops once its top {TOP} has come out the same "
        f"{STABLE_ROUNDS + 1} rounds of {ROUND} prompts in a row). fpe: forward-pass "
        "equivalents (work over one intact pass of the whole model over exact's prompts); "
        f"top-k: how many of exact Ships' top k heads the mode also ranks in its top k; rho: "
        "Spearman's rho over all heads; s / pruning: seconds over the model's own pruning "
        f"stage (llm-compressor's Wanda 50% through `oneshot`, {PRUNING_SAMPLES} utility "
        "samples), timed in the same run.",
        "",
    ]
    headers = ["model", "mode", "prompts", "fpe", "fpe / exact", "s", "s / exact"]
    headers += ["s / pruning", "top-4", "top-8", "top-10", "rho"]
    table = []
    for r in results:
        what = (
            f"{r['model']} ({r['layers']} x {r['heads'] // r['layers']} heads, prompts of "
            f"{r['mean_prompt_tokens']:.0f} tokens)"
        )
        for row in r["rows"]:
            top = row["top"]
            table.append(
                [what, row["mode"], row["prompts"], fmt(row["fpe"]), f"{row['fpe_ratio']:.3f}",
                 fmt(row["seconds"]), f"{row['seconds_ratio']:.3f}", f"{row['pruning_ratio']:.2f}",
                 *(f"{top.get(k, 'n/a')}/{k}" for k in (4, 8, 10)), f"{row['rho']:.3f}"]
            )  # fmt: skip
    lines.append(markdown_table(headers, table, numeric_from=3))
    lines += [
        "",
        f"How each ranking's top {TOP} settles as the prompts grow: after each round of "
        f"{ROUND} prompts, how many of the heads of its top {TOP} at the last round it "
        "already has (the point where the ranking stops moving).",
        "",
    ]
    for r in results:
        for label, counts in r["settling"].items():
            steps = ", ".join(f"{n}: {k}" for n, k in counts.items())
            lines.append(f"- {r['model']}, {label}: {steps}")
    lines += [
        "",
        "Extrapolated, not measured: each mode's forward-pass equivalents at larger shapes "
        "(exact: 1 + H (L + 1) / 2 intact passes; last position: its measured share of the "
        f"tail; screened: last position plus the measured verification of {SCREEN} heads; "
        "first order and adaptive: as measured), and over the pruning stage, taking the "
        "pruning stage's fpe measured here to scale as a forward pass does. The same prompts, "
        "so the same prompt lengths, are assumed.",
        "",
    ]
    for r in results:
        lines += [f"From {r['model']}:", ""]
        lines.append(
            markdown_table(["shape", "mode", "fpe", "x pruning"], extrapolate(r), numeric_from=2)
        )
        lines.append("")
    if skipped:
        lines += ["Not materialized here, so not measured: " + ", ".join(skipped) + "."]
    return "\n".join(lines).rstrip()


def pareto_figure(results: list[dict], path: Path) -> Path:
    """Cost against agreement, every mode on every model: top-10 overlap and rho against the
    share of exact's forward-pass equivalents (SVG, text, so it can live beside RESULTS.md)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6))
    axes = figure.subplots(1, 2, sharex=True)
    markers = dict(zip([m[0] for m in MODES], "osD^v", strict=True))
    for r in results:
        for row in r["rows"]:
            x = max(row["fpe_ratio"], 1e-3)
            for ax, y in zip(axes, (row["top"].get(10, 0), row["rho"]), strict=True):
                ax.scatter(x, y, marker=markers[row["mode"]], label=f"{r['model']}: {row['mode']}")
                ax.annotate(
                    r["model"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
    axes[0].set_ylabel(f"top-{TOP} shared with exact Ships")
    axes[0].axhline(8, color="grey", lw=0.5, ls="--")
    axes[1].set_ylabel("Spearman's rho with exact Ships")
    axes[1].axhline(0.9, color="grey", lw=0.5, ls="--")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("forward-pass equivalents / exact's")
        ax.axvline(0.1, color="grey", lw=0.5, ls="--")
    handles, labels = axes[1].get_legend_handles_labels()
    seen = {}
    for handle, label in zip(handles, labels, strict=True):
        seen.setdefault(label.split(": ", 1)[1], handle)
    figure.legend(list(seen.values()), list(seen), fontsize=7, loc="lower center", ncol=len(seen))
    figure.subplots_adjust(bottom=0.3, wspace=0.3)
    figure.savefig(path, format="svg", metadata={"Date": None})
    return path


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
        results.append(measure(name, args.prompts))
    body = render(results, skipped, time.monotonic() - started)
    print("\n" + body)
    write_results("bench-heads", body)
    print(f"wrote {pareto_figure(results, PARETO)}")


if __name__ == "__main__":
    main()
