"""`make bench-real-same-k`: on organism-qwen, which ranking wins back the most refusals for the
same number of restored weights? Every setting restores at most K weights, K being the paper
default's restored count (`wanda+hsr-paper`, made by `make bench-real`), on the same Wanda 50%
model:

- the paper default with first-order (`attribution`) heads instead of the exact (screened) ones;
- restore_gain (the recommended recipe: net of the bundled look-alikes' refusals) with the exact
  screened heads, with first-order heads, and with no head stage (every head selected, so the
  gain ranks every pruned attention weight);
- the random control: K pruned attention weights drawn uniformly (seed 0), dense values put back.

Each is compressed with `hsr compress` (the setting's recipe and a `max_restored_per_10k` that
caps it at K; random: from the saved Wanda and dense checkpoints), then served by vLLM and scored
exactly as bench_real scores its models (the same tasks, options and judge, so the dense, Wanda
and paper default evaluations are reused). It writes the `bench-real-same-k` block of
integration/bench/RESULTS.md: refusal on StrongREJECT and HarmBench with intervals, RSR with its
paired interval, McNemar against the Wanda model, over-refusal, the HSR stage's seconds over the
pruning's, head-scoring forward-pass equivalents, and how far first-order heads agree with the
exact ones (top-8 overlap, Spearman's rho over every head).

    make bench-real                  # dense, wanda and wanda+hsr-paper first (or, at least:)
    .venv/bin/python -m integration.bench.bench_real --settings wanda,wanda+hsr-paper --skip-code
    .venv/bin/python -m integration.bench.bench_real_same_k [--skip-lookalike] [--render-saved]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hsr_eval.files import published_dir, write_json_atomic
from hsr_eval.outcomes import pruned_label
from hsr_eval.stats import rate_summary
from hsr_eval.tables import interval_cell
from integration.bench import bench_real as br
from integration.bench.bench_hsr import write_results
from integration.bench.bench_scale import spearman
from integration.organisms import qwen

PAPER = "wanda+hsr-paper"
PRUNED = "wanda"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
RANDOM = "wanda+hsr-random-k"
# no head stage: select every head of organism-qwen (24 layers x 14), ranked by the cheap
# first-order score, so that restore_gain ranks every pruned attention weight
ALL_HEADS = 24 * 14
FIRST_ORDER = "HSRModifier.head_score=attribution"


@dataclass(frozen=True)
class SameK:
    label: str
    recipe: str
    overrides: tuple[str, ...]
    heads: str  # what the head stage was, for the table
    note: str


SETTINGS = (
    SameK(
        "wanda+hsr-paper-fo-k",
        "wanda_hsr",
        (FIRST_ORDER,),
        "8, first-order",
        "paper default (Wanda neuron scores) with first-order heads, capped at K",
    ),
    SameK(
        "wanda+hsr-gain-k",
        "wanda_hsr_recommended",
        (),
        "8, exact (screened)",
        "recommended recipe (restore_gain net of the look-alikes) capped at K",
    ),
    SameK(
        "wanda+hsr-gain-fo-k",
        "wanda_hsr_recommended",
        (FIRST_ORDER, "HSRModifier.head_rerun=all_positions"),
        "8, first-order",
        "recommended recipe with first-order heads, capped at K",
    ),
    SameK(
        "wanda+hsr-gain-all-k",
        "wanda_hsr_recommended",
        (FIRST_ORDER, "HSRModifier.head_rerun=all_positions", f"HSRModifier.num_heads={ALL_HEADS}"),
        f"all {ALL_HEADS} (no head stage)",
        "recommended recipe over every pruned attention weight (no head stage), capped at K",
    ),
)
NOTES = {
    PRUNED: "Wanda 50%",
    PAPER: "paper default (Wanda neuron scores), exact screened heads: its restored count is K",
    RANDOM: "random control: K pruned attention weights (q, k, v, o) drawn uniformly, seed 0",
    **{s.label: s.note for s in SETTINGS},
}
HEADS = {PAPER: "8, exact (screened)", RANDOM: "", **{s.label: s.heads for s in SETTINGS}}


def paper_budget() -> tuple[int, int]:
    """(K, language parameters) from the paper default's report, made by bench_real."""
    report = br.OUT / "models" / PAPER / "hsr_report.json"
    if not report.is_file():
        raise SystemExit(
            f"error: {report} is missing: run `python -m integration.bench.bench_real "
            f"--settings {PRUNED},{PAPER} --skip-code` first (it sets K)"
        )
    totals = json.loads(report.read_text())["totals"]
    return totals["restored"], totals["language_params"]


def cap_override(count: int, language_params: int) -> str:
    """The `max_restored_per_10k` that caps a run at `count` weights (the modifier floors
    per_10k * params / 1e4; repr round-trips the float)."""
    return f"HSRModifier.max_restored_per_10k={count * 1e4 / language_params!r}"


def _load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for part in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(part))
    return tensors


@torch.no_grad()
def random_control(pruned_dir: Path, dense_dir: Path, out: Path, count: int, seed: int = 0):
    """A copy of the pruned checkpoint with the dense values put back at `count` of its pruned
    attention weights, drawn uniformly without replacement (a seeded generator), written
    atomically. Pruned: zero in the pruned model where the dense one is not."""
    from safetensors.torch import save_file

    pruned, dense = _load(pruned_dir), _load(dense_dir)
    keys = sorted(
        k
        for k in pruned
        if ".layers." in k and k.endswith(".weight") and any(a in k for a in ATTENTION)
    )
    flats = []
    for key in keys:
        mask = (pruned[key] == 0) & (dense[key] != 0)
        flats.append(mask.flatten().nonzero().flatten())
    sizes = torch.tensor([len(f) for f in flats])
    if count > int(sizes.sum()):
        raise ValueError(f"count {count} exceeds the {int(sizes.sum())} pruned attention weights")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(int(sizes.sum()), generator=generator)[:count]
    # which tensor each drawn index falls in, and where inside it
    ends = sizes.cumsum(0)
    owner = torch.searchsorted(ends, chosen, right=True)
    starts = ends - sizes
    for i, key in enumerate(keys):
        picked = flats[i][chosen[owner == i] - starts[i]]
        weight = pruned[key].view(-1)
        weight[picked] = dense[key].view(-1)[picked].to(weight.dtype)
    with published_dir(out) as staging:
        for item in pruned_dir.iterdir():
            if item.is_file() and item.suffix != ".safetensors" and item.name != "hsr_report.json":
                shutil.copy2(item, staging / item.name)
        save_file({k: v.contiguous() for k, v in pruned.items()}, staging / "model.safetensors")
        write_json_atomic(staging / "random_control.json", {"count": count, "seed": seed})
    return out


def head_agreement(exact_report: Path, first_order_report: Path, top: int = 8) -> dict:
    """Top-`top` overlap and Spearman's rho (every head) of two reports' head scores."""
    exact, first = (
        {(h["layer"], h["head"]): h["score"] for h in json.loads(p.read_text())["heads"]}
        for p in (exact_report, first_order_report)
    )
    keys = sorted(exact)
    ranked = [sorted(s, key=lambda k, s=s: (-s[k], k))[:top] for s in (exact, first)]
    return {
        "top": top,
        "overlap": len(set(ranked[0]) & set(ranked[1])),
        "rho": spearman([exact[k] for k in keys], [first[k] for k in keys]),
    }


def costs(labels: list[str], walls: dict) -> dict[str, dict]:
    """Restored count, HSR s / pruning s and head-scoring forward-pass equivalents per row."""
    out = br.hsr_costs({label: br.OUT / "models" / label for label in labels}, walls)
    for label in labels:
        report = br.OUT / "models" / label / "hsr_report.json"
        if report.is_file():
            scoring = json.loads(report.read_text())["scoring"]
            out[label]["forward"] = scoring.get("head_scoring_forward_equivalents")
        elif label == RANDOM:
            count = json.loads((br.OUT / "models" / RANDOM / "random_control.json").read_text())
            out[label] = {"restored": count["count"]}
    return out


def render(safety: dict, lookalike: dict, cost: dict, count: int, agreement: dict) -> str:
    asr = {task: br.task_outcomes(safety, task, "attack_success_rate") for task in br.SAFETY_TASKS}
    over = br.task_outcomes(safety, br.OVERREFUSAL_TASK, "over_refusal_rate")
    alike = br.task_outcomes(lookalike, br.LOOKALIKE_TASK, "over_refusal_rate")
    header = ["setting", "heads", "restored"]
    for name in br.SAFETY_TASKS.values():
        header += [f"{name} refusal %", f"{name} RSR [95% CI]; McNemar vs Wanda"]
    header += ["look-alike over-refusal % (200)", "borderline (22)", "HSR s / pruning s"]
    header += ["head scoring, forward passes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in safety["models"]:
        row = cost.get(label, {})
        cells = [label, HEADS.get(label, ""), f"{row['restored']:,}" if "restored" in row else ""]
        for task in br.SAFETY_TASKS:
            cells.append(interval_cell(rate_summary([1 - v for v in asr[task][label].values()])))
            base = pruned_label(label)
            if base:
                cells.append(br.rsr_cell(asr[task]["dense"], asr[task][base], asr[task][label]))
            elif label != "dense":
                cells.append(br.pruning_cell(asr[task]["dense"], asr[task][label]))
            else:
                cells.append("")
        cells.append(br.rate_or_missing(alike, label))
        cells.append(interval_cell(rate_summary(list(over[label].values()))))
        cells.append(row.get("ratio", ""))
        forward = row.get("forward")
        cells.append("" if forward is None else f"{forward:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{label}`: {NOTES[label]}" for label in safety["models"] if label in NOTES]
    return "\n".join(
        [
            f"organism-qwen, Wanda 50%, every HSR row restoring at most **K = {count:,}** "
            "weights (the paper default's count), served by vLLM and scored like the bench-real "
            "block (same tasks, options and keyword judge; its dense, Wanda and paper default "
            "evaluations are the same ones).",
            "",
            *lines,
            "",
            *notes,
            "",
            f"Exact (screened) against first-order head scores on the Wanda model: top-"
            f"{agreement['top']} overlap {agreement['overlap']} of {agreement['top']}, "
            f"Spearman's rho {agreement['rho']:.2f} over every head (the screened run scores "
            "exactly only its top candidates; the rest keep their screen score).",
            "",
            "Rates in % with 95% Wilson intervals; RSR with its 95% paired bootstrap interval "
            "(2000 resamples, seed 0); McNemar: exact two-sided p against the Wanda model, with "
            "the prompts made safe (+) and unsafe. HSR s / pruning s: the HSR stage's seconds "
            "from its report over the Wanda-only `hsr compress` seconds. Head scoring in "
            "forward-pass equivalents of the calibration set, from the report. HumanEval is not "
            "run for these rows (the bench-real block has it for the shipped settings).",
        ]
    )


def evaluate(models: dict[str, Path], skip_lookalike: bool) -> tuple[dict, dict]:
    short = ["--gen-kwargs", "max_gen_toks=128"]  # bench_real's default --safety-tokens
    safety = br.compare(
        models, (*br.SAFETY_TASKS, br.OVERREFUSAL_TASK), br.OUT / "eval-safety", short, False
    )
    lookalike = (
        {"models": {}}
        if skip_lookalike
        else br.compare(models, (br.LOOKALIKE_TASK,), br.OUT / "eval-lookalike", short, False)
    )
    return safety, lookalike


def saved(labels: list[str], name: str) -> dict:
    rows = {}
    for label in labels:
        path = br.OUT / name / label / "comparison.json"
        if path.is_file():
            rows[label] = json.loads(path.read_text())["models"][label]
    return {"models": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--skip-lookalike",
        action="store_true",
        help="leave the 200 look-alikes out of this run (their cells read 'not evaluated')",
    )
    parser.add_argument(
        "--render-saved",
        action="store_true",
        help="write the block from the saved models and evaluations (no compression)",
    )
    args = parser.parse_args(argv)
    count, params = paper_budget()
    labels = ["dense", PRUNED, PAPER, *(s.label for s in SETTINGS), RANDOM]
    walls = json.loads(br.WALLS.read_text()) if br.WALLS.is_file() else {}
    if PRUNED not in walls:
        raise SystemExit(f"error: {br.WALLS} has no {PRUNED} seconds: run bench_real first")
    started = time.monotonic()
    if args.render_saved:
        safety, lookalike = saved(labels, "eval-safety"), saved(labels, "eval-lookalike")
        missing = [label for label in labels if label not in safety["models"]]
        if missing:
            raise SystemExit(f"error: no saved safety evaluation of {missing} under {br.OUT}")
    else:
        dense = qwen.materialize()
        models = {"dense": dense, **{label: br.OUT / "models" / label for label in labels[1:3]}}
        for setting in SETTINGS:
            overrides = (*setting.overrides, cap_override(count, params))
            spec = br.Setting(setting.label, setting.recipe, overrides, setting.note)
            models[setting.label], _ = br.compress(spec, dense)
        models[RANDOM] = random_control(
            models[PRUNED], dense, br.OUT / "models" / RANDOM, count, seed=0
        )
        safety, lookalike = evaluate(models, args.skip_lookalike)
    walls = json.loads(br.WALLS.read_text())
    agreement = head_agreement(
        br.OUT / "models" / PAPER / "hsr_report.json",
        br.OUT / "models" / "wanda+hsr-paper-fo-k" / "hsr_report.json",
    )
    body = render(safety, lookalike, costs(labels[1:], walls), count, agreement)
    command = "python -m integration.bench.bench_real_same_k"
    if args.render_saved:
        command, when = command + " --render-saved", "from its saved evaluations"
    else:
        when = f"in {time.monotonic() - started:.0f} s"
    body += (
        f"\n\n_Generated by `{command}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{when}._"
    )
    print("\n" + body)
    write_results("bench-real-same-k", body)


if __name__ == "__main__":
    main()
