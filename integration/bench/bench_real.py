"""`make bench-real`: does pruning cost a real safety-tuned model its refusals, and does HSR win
them back? organism-qwen (Qwen2.5-Coder-0.5B-Instruct, integration/organisms/qwen.py) on the
published benchmarks that run offline.

Each setting is compressed with `hsr compress` (the bundled recipes, HSR's default calibration
sets, the pruning stage on `hsr-utility-mini` with 64 samples, in float32), then every model is
served by `vllm serve` and scored by `hsr-compare` in the serving virtualenv ($HSR_SERVE_VENV),
with the lm-eval tasks and their one scorer (the keyword judge unless HSR_JUDGE names another):

- safety: `hsr_strongreject` (313), `hsr_harmbench` (240); over-refusal on this repository's 200
  benign look-alike requests (`hsr_benign_lookalike`) and the organisms' 22 borderline prompts
  (`hsr_overrefusal`); answers cut at `--safety-tokens` (the judge reads the opening);
- utility: `hsr_humaneval` (164), pass@1 at the task's own 512 tokens.

It writes the `bench-real` block of integration/bench/RESULTS.md (and a short table of the same
evaluations into README.md's `bench-real` block): per model, each benchmark's
refusal with its Wilson interval, and for each `<pruned>+hsr-<setting>` its RSR with the paired
bootstrap interval, McNemar's p and the made-safe / made-unsafe counts against the pruned model;
over-refusal, HumanEval pass@1, the restored count, and the HSR stage's seconds over the pruning
stage's (both measured in this run: every setting is compressed again, which is cheap). An
evaluation is the costly part (about 8 minutes a model on two cores): one already made under
outputs/bench-real is reused when it scored bit-identical weights (the safetensors' digests)
with the same tasks and options, unless --fresh.

    make bench-real                     # or:
    .venv/bin/python -m integration.bench.bench_real --settings wanda,wanda+hsr-recommended
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hsr_eval.files import file_sha256, replace_generated_block, write_json_atomic
from hsr_eval.outcomes import pruned_label, read_lm_eval_samples
from hsr_eval.stats import mcnemar_exact, paired_bootstrap_rsr, rate_summary, rsr
from hsr_eval.tables import interval_cell
from integration.bench.bench_hsr import write_results
from integration.organisms import qwen

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "outputs" / "bench-real"
WALLS = OUT / "models" / "compress_seconds.json"
README = ROOT / "README.md"
PRUNING_DATA = ROOT / "hsr_plugin" / "data" / "hsr-utility-mini.jsonl"
SAFETY_TASKS = {"hsr_strongreject": "StrongREJECT", "hsr_harmbench": "HarmBench"}
OVERREFUSAL_TASK = "hsr_overrefusal"
LOOKALIKE_TASK = "hsr_benign_lookalike"
CODE_TASK = "hsr_humaneval"
PARETO = Path(__file__).resolve().parent / "real_pareto.svg"
# requests in flight to vllm serve: decoding on the CPU is bound by reading the weights, so a
# larger batch costs about the same per step (the KV cache of 256 MiB holds ~50 short answers)
CONCURRENT = 32
# Screened heads: exact Ships on every head at the default prompts costs over an hour on this
# model on two CPU cores; a last-position screen, then exact Ships on the top candidates, keeps
# 9 of its top 10 (RESULTS.md, bench-heads). The block says which heads each row has.
SCREENED = ("HSRModifier.head_rerun=screened",)
WANDA = "WandaPruningModifier"
# The pruning methods and the higher sparsity, written to a block of their own beside bench-real's
# Wanda 50% study: `--block bench-real-prunings`.
PRUNINGS = "sparsegpt,sparsegpt+hsr-recommended,wanda60,wanda60+hsr-recommended"


@dataclass(frozen=True)
class Setting:
    label: str  # hsr-compare's label: `<pruned>+hsr-<name>` pairs with its pruning
    recipe: str
    overrides: tuple[str, ...] = ()
    note: str = ""


SETTINGS = {
    s.label: s
    for s in (
        Setting("wanda", "wanda", note="Wanda 50%"),
        Setting("sparsegpt", "sparsegpt", note="SparseGPT 50%"),
        Setting(
            "sparsegpt+hsr-recommended",
            "sparsegpt_hsr_recommended",
            (),
            "recommended recipe after SparseGPT 50% (`recipes/sparsegpt_hsr_recommended.yaml`)",
        ),
        Setting("wanda60", "wanda", (f"{WANDA}.sparsity=0.6",), "Wanda 60%"),
        Setting(
            "wanda60+hsr-recommended",
            "wanda_hsr_recommended",
            (f"{WANDA}.sparsity=0.6",),
            "recommended recipe after Wanda 60% (its budget unchanged)",
        ),
        Setting(
            "wanda+hsr-paper",
            "wanda_hsr",
            SCREENED,
            "paper default (Wanda neuron scores), screened heads",
        ),
        Setting(
            "wanda+hsr-gain",
            "wanda_hsr_recommended",
            ("HSRModifier.benign_data=null",),
            "restore_gain, 25 per 10k, screened heads, no look-alikes (the recommended recipe "
            "before this benchmark)",
        ),
        Setting(
            "wanda+hsr-recommended",
            "wanda_hsr_recommended",
            (),
            "recommended recipe: restore_gain net of the 64 bundled benign look-alikes' "
            "refusals (`benign_data: hsr-benign-mini`), 25 per 10k, screened heads",
        ),
        Setting(
            "wanda+hsr-recommended-stop",
            "wanda_hsr_recommended",
            ("HSRModifier.benign_stop_margin=0",),
            "recommended recipe, restored in steps and stopped before the bundled look-alikes' "
            "refusal NLL falls below the dense model's (`benign_stop_margin: 0`)",
        ),
    )
}
DEFAULT_SETTINGS = "wanda,wanda+hsr-gain,wanda+hsr-recommended,wanda+hsr-recommended-stop"


def compress(setting: Setting, dense: Path) -> tuple[Path, float]:
    """The compressed model's folder and the wall seconds of its `hsr compress`, always run: it
    is cheap beside the evaluation, and it measures the cost in this run."""
    out = OUT / "models" / setting.label
    hsr = Path(sys.executable).with_name("hsr")
    cmd = [str(hsr), "compress", "--model", str(dense), "--recipe", setting.recipe]
    cmd += ["--output", str(out), "--dataset", str(PRUNING_DATA), "--num-samples", "64"]
    # float32: organism-qwen is bfloat16, which a CPU without native bfloat16 computes ~60x
    # slower; vLLM serves every model in float32 on such a CPU anyway (launch.default_dtype)
    cmd += ["--dtype", "float32"]
    cmd += [arg for override in setting.overrides for arg in ("--set", override)]
    if out.exists():
        cmd.append("--overwrite")
    print("[bench-real] $ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.monotonic() - started
    # kept beside the models, so that --render-saved can show the costs of this run
    walls = json.loads(WALLS.read_text()) if WALLS.is_file() else {}
    write_json_atomic(WALLS, {**walls, setting.label: wall})
    return out, wall


def require_pruned_bases(chosen: list[str]) -> None:
    """Each HSR setting's RSR and McNemar compare it with its pruned model: refuse, before any
    compression, a list that leaves that model out (its saved evaluation is reused when its
    weights come out the same)."""
    missing = sorted({b for b in map(pruned_label, chosen) if b and b not in chosen})
    if missing:
        raise SystemExit(
            f"error: --settings needs {', '.join(missing)} beside the HSR settings of that "
            "pruning (their RSR is measured against it); add it"
        )


def weights_digest(folder: Path) -> str:
    """SHA-256 over the model's safetensors files (names and digests), what an evaluation saw."""
    parts = [f"{p.name}:{file_sha256(p)}" for p in sorted(Path(folder).glob("*.safetensors"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def evaluation_key(path: Path, tasks: tuple[str, ...], extra: list[str]) -> dict:
    return {"tasks": list(tasks), "options": list(extra), "weights": weights_digest(path)}


def compare(
    models: dict[str, Path], tasks: tuple[str, ...], out: Path, extra: list[str], fresh: bool
) -> dict:
    """hsr-compare of each model on `tasks`, one folder a model (`out/<label>`), so that adding
    a setting evaluates only that setting: a model's earlier evaluation is reused when it scored
    bit-identical weights with the same tasks and options (unless `fresh`). Returns the
    comparison's shape, {"models": {label: row}}, over all of `models`."""
    serve_venv = Path(os.environ.get("HSR_SERVE_VENV", ROOT / ".venv-serve"))
    exe = serve_venv / "bin" / "hsr-compare"
    if not exe.is_file():
        raise SystemExit(f"error: {exe} is missing: run `make serve-venv` first")
    rows = {}
    for label, path in models.items():
        folder = out / label
        key = evaluation_key(path, tasks, extra)
        key_file = folder / "bench_key.json"
        if not fresh and key_file.is_file() and json.loads(key_file.read_text()) == key:
            print(
                f"[bench-real] {out.name}/{label}: these weights were scored already; reusing",
                flush=True,
            )
        else:
            if folder.exists():
                shutil.rmtree(folder)  # a fresh evaluation: this benchmark's own output
            cmd = [str(exe), "--out", str(folder), "--tasks", ",".join(tasks), *extra]
            cmd += ["--num-concurrent", str(CONCURRENT), "--models", f"{label}={path}"]
            print("[bench-real] $ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
            write_json_atomic(key_file, key)
        rows[label] = json.loads((folder / "comparison.json").read_text())["models"][label]
    return {"models": rows}


def task_outcomes(comparison: dict, task: str, metric: str) -> dict[str, dict[str, int]]:
    """{model: {prompt id: 0/1}} of one task's metric, from lm-eval's logged samples."""
    out = {}
    for label, row in comparison["models"].items():
        rows = read_lm_eval_samples(Path(row["lm_eval_results"]))
        out[label] = {r["id"]: int(r[metric]) for r in rows if r["task"] == task and metric in r}
    return out


def rate_or_missing(passed: dict[str, dict[str, int]], label: str) -> str:
    """A rate (HumanEval pass@1, look-alike over-refusal) with its interval, or why there is
    none (a --render-saved of a run stopped before that evaluation)."""
    if not passed.get(label):
        return "not evaluated"
    return interval_cell(rate_summary(list(passed[label].values())))


def rsr_cell(dense: dict, pruned: dict, realigned: dict) -> str:
    """RSR on one benchmark's attack success, its paired interval, and McNemar vs the pruned."""
    test = mcnemar_exact(pruned, realigned)
    against = f"p {test['p_value']:.2g}, +{test['b']} safe / {test['c']} unsafe"
    value = rsr(*(sum(o.values()) / len(o) for o in (dense, pruned, realigned)))
    if value is None:
        return f"n/a (pruning changed nothing); {against}"
    ci = paired_bootstrap_rsr(dense, pruned, realigned).as_json()["ci95"]
    span = f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else ""
    return f"{100 * value:.0f}%{span}; {against}"


def pruning_cell(dense: dict, pruned: dict) -> str:
    """What pruning did to one benchmark's attack success: McNemar against the dense model, with
    the prompts it made unsafe and safe (RSR means little where this is not significant)."""
    test = mcnemar_exact(dense, pruned)
    return f"vs dense: p {test['p_value']:.2g}, {test['c']} made unsafe / {test['b']} safe"


def _error_bar(summary: dict) -> list[list[float]]:
    """A rate summary's 95% interval as matplotlib's [[below], [above]], in percent."""
    low, high = summary["ci95"]
    return [[100 * (summary["rate"] - low)], [100 * (high - summary["rate"])]]


def pareto_figure(safety: dict, lookalike: dict, path: Path = PARETO) -> Path | None:
    """Refusal of harmful requests (StrongREJECT, HarmBench) against refusal of the benign
    look-alikes, every model with its 95% intervals on both axes (SVG, beside RESULTS.md).
    None when no model has a look-alike evaluation."""
    from matplotlib.figure import Figure

    alike = task_outcomes(lookalike, LOOKALIKE_TASK, "over_refusal_rate")
    labels = [label for label in safety["models"] if alike.get(label)]
    if not labels:
        return None
    figure = Figure(figsize=(9, 3.8))
    axes = figure.subplots(1, len(SAFETY_TASKS), sharex=True)
    for ax, (task, name) in zip(axes, SAFETY_TASKS.items(), strict=True):
        asr = task_outcomes(safety, task, "attack_success_rate")
        for label in labels:
            x = rate_summary(list(alike[label].values()))
            y = rate_summary([1 - v for v in asr[label].values()])
            ax.errorbar(
                100 * x["rate"], 100 * y["rate"], xerr=_error_bar(x), yerr=_error_bar(y),
                fmt="o", capsize=2, label=label,
            )  # fmt: skip
        ax.set_xlabel("benign look-alikes refused % (200)")
        ax.set_ylabel(f"{name} refused %")
        if "dense" in labels:  # the dense model's over-refusal, and 10 points above it
            dense = 100 * rate_summary(list(alike["dense"].values()))["rate"]
            ax.axvline(dense, color="grey", lw=0.5, ls="--")
            ax.axvline(dense + 10, color="grey", lw=0.5, ls=":")
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, fontsize=7, loc="lower center", ncol=min(len(names), 4))
    figure.subplots_adjust(bottom=0.34, wspace=0.3)
    figure.savefig(path, format="svg", metadata={"Date": None})
    return path


def render(safety: dict, lookalike: dict, code: dict, costs: dict, args, seconds: float) -> str:
    labels = list(safety["models"])
    asr = {task: task_outcomes(safety, task, "attack_success_rate") for task in SAFETY_TASKS}
    over = task_outcomes(safety, OVERREFUSAL_TASK, "over_refusal_rate")
    alike = task_outcomes(lookalike, LOOKALIKE_TASK, "over_refusal_rate")
    passed = task_outcomes(code, CODE_TASK, "pass_at_1")
    header = ["model", "restored"]
    for name in SAFETY_TASKS.values():
        header += [
            f"{name} refusal %",
            f"{name} RSR [95% CI]; McNemar vs pruned (pruned: vs dense)",
        ]
    header += ["over-refusal %: look-alike (200)", "borderline (22)"]
    header += ["HumanEval pass@1 %", "HSR s / pruning s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cost = costs.get(label, {})
        cells = [label, f"{cost['restored']:,}" if cost.get("restored") is not None else ""]
        for task in SAFETY_TASKS:
            refusals = [1 - v for v in asr[task][label].values()]
            cells.append(interval_cell(rate_summary(refusals)))
            base = pruned_label(label)
            if base:
                cells.append(rsr_cell(asr[task]["dense"], asr[task][base], asr[task][label]))
            elif label != "dense":
                cells.append(pruning_cell(asr[task]["dense"], asr[task][label]))
            else:
                cells.append("")
        cells.append(rate_or_missing(alike, label))
        cells.append(interval_cell(rate_summary(list(over[label].values()))))
        cells.append(rate_or_missing(passed, label))
        cells.append(cost.get("ratio", ""))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{label}`: {SETTINGS[label].note}" for label in labels if label in SETTINGS]
    return "\n".join(
        [
            "organism-qwen (Qwen2.5-Coder-0.5B-Instruct, dequantized from its Q4 GGUF), served by "
            "vLLM, scored by the hsr_safety tasks with the keyword judge unless noted. Refusal on "
            "StrongREJECT (313) and HarmBench (159 standard + 81 contextual); RSR on each "
            "benchmark's attack success; over-refusal on this repository's 200 benign look-alike "
            "requests and the organisms' 22 borderline prompts; "
            "HumanEval pass@1 on 164 problems.",
            "",
            *lines,
            "",
            *notes,
            "",
            "Rates in % with 95% Wilson intervals; RSR with a 95% paired bootstrap interval over "
            "prompts (2000 resamples, seed 0); McNemar: exact two-sided p against the pruned "
            "model, with the prompts it made safe (+) and unsafe; on a pruned row, against the "
            "dense model (where pruning's cost is not significant, RSR divides by noise). "
            "HSR s / pruning s: the HSR "
            "stage's seconds from its report over the pruning-only run's `hsr compress` seconds, "
            "both in this run.",
            *(["", PARETO_NOTE] if not block_option(args) else []),
            "",
            f"_Generated by `python -m integration.bench.bench_real --settings {args.settings} "
            f"--safety-tokens {args.safety_tokens}{block_option(args)}` on "
            f"{time.strftime('%Y-%m-%d')}, "
            f"{platform.machine()}, in {seconds:.0f} s. Safety answers cut at "
            f"{args.safety_tokens} tokens (the benchmarks' protocol allows 512; the keyword judge "
            "reads the first 200 characters); HumanEval at 512. Compressed models calibrated and "
            "saved in float32 (`hsr compress --dtype float32`); the dense model is the bfloat16 "
            "checkpoint, served in float32 like the others._",
        ]
    )


PARETO_NOTE = (
    "The Pareto front of refusal against look-alike over-refusal, every model with its "
    "intervals on both axes: integration/bench/real_pareto.svg (dashed: the dense "
    "model's look-alike over-refusal; dotted: 10 points above it)."
)


def block_option(args) -> str:
    block = getattr(args, "block", "bench-real")
    return "" if block == "bench-real" else f" --block {block}"


def readme_summary(safety: dict, lookalike: dict, code: dict) -> str:
    """The README's short table of the same evaluations: refusal, over-refusal and HumanEval."""
    asr = {task: task_outcomes(safety, task, "attack_success_rate") for task in SAFETY_TASKS}
    alike = task_outcomes(lookalike, LOOKALIKE_TASK, "over_refusal_rate")
    passed = task_outcomes(code, CODE_TASK, "pass_at_1")
    header = ["model", *(f"{name} refusal %" for name in SAFETY_TASKS.values())]
    header += ["benign look-alike refused %", "HumanEval pass@1 %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in safety["models"]:
        cells = [SETTINGS[label].note if label in SETTINGS else label]
        for task in SAFETY_TASKS:
            cells.append(interval_cell(rate_summary([1 - v for v in asr[task][label].values()])))
        cells.append(rate_or_missing(alike, label))
        cells.append(rate_or_missing(passed, label))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(
        [
            *lines,
            "",
            f"_Generated by `make bench-real` on {time.strftime('%Y-%m-%d')} (95% Wilson "
            "intervals; the keyword judge; RSR, McNemar and costs in "
            "integration/bench/RESULTS.md, block bench-real)._",
        ]
    )


def write_readme(body: str) -> None:
    replace_generated_block(README, "bench-real", body)
    print(f"wrote {README}")


def load_comparisons() -> tuple[dict, dict, dict]:
    """The three evaluations of the last run, from OUT (for --readme-only and --render-saved);
    the look-alike and HumanEval ones may be missing."""
    found = []
    for name in ("eval-safety", "eval-lookalike", "eval-code"):
        paths = sorted((OUT / name).glob("*/comparison.json"))
        if not paths and name == "eval-safety":
            raise SystemExit(f"error: {OUT / name} holds no evaluation: run the benchmark first")
        rows = {}
        for path in paths:
            rows.update(json.loads(path.read_text())["models"])
        found.append({"models": rows})
    return found[0], found[1], found[2]


def hsr_costs(models: dict[str, Path], walls: dict[str, float | None]) -> dict[str, dict]:
    costs: dict[str, dict] = {}
    for label, path in models.items():
        report = path / "hsr_report.json"
        if not report.is_file():
            continue
        data = json.loads(report.read_text())
        entry = {"restored": data["totals"]["restored"]}
        base = walls.get(pruned_label(label) or "")
        if base:
            entry["ratio"] = f"{sum(data['timing_s'].values()):.0f} / {base:.0f}"
        costs[label] = entry
    return costs


def render_saved(args) -> None:
    """The blocks from what an earlier (maybe stopped) run saved under OUT."""
    safety, lookalike, code = load_comparisons()
    chosen = ["dense", *(s.strip() for s in args.settings.split(",") if s.strip())]
    require_pruned_bases(chosen)
    missing = [label for label in chosen if label not in safety["models"]]
    if missing:
        raise SystemExit(f"error: no saved safety evaluation of {missing} under {OUT}")
    for comparison in (safety, lookalike, code):
        comparison["models"] = {k: v for k, v in comparison["models"].items() if k in chosen}
    safety["models"] = {label: safety["models"][label] for label in chosen}
    walls = json.loads(WALLS.read_text()) if WALLS.is_file() else {}
    models = {label: OUT / "models" / label for label in chosen if label != "dense"}
    body = render(safety, lookalike, code, hsr_costs(models, walls), args, 0.0)
    if args.note:  # what the saved evaluations cannot say themselves
        body = body.rstrip() + f"\n\nNote: {args.note}"
    body = body.replace(", in 0 s.", ", rendered from its saved evaluations.").replace(
        "bench_real --settings", "bench_real --render-saved --settings"
    )
    print("\n" + body)
    publish(args, body, safety, lookalike, code)


def publish(args, body: str, safety: dict, lookalike: dict, code: dict) -> None:
    """RESULTS.md's block; the README's table and the Pareto figure follow bench-real's own
    block only (another block, such as bench-real-prunings, stands beside it in RESULTS.md)."""
    write_results(args.block, body)
    if args.block == "bench-real":
        write_readme(readme_summary(safety, lookalike, code))
        pareto_figure(safety, lookalike)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help=", ".join(SETTINGS))
    parser.add_argument("--safety-tokens", type=int, default=128)
    parser.add_argument(
        "--block",
        default="bench-real",
        help="RESULTS.md block to write; bench-real (the default) also rewrites README.md's "
        f"table and the Pareto figure. For the other prunings: --settings {PRUNINGS} "
        "--block bench-real-prunings",
    )
    parser.add_argument(
        "--limit", type=int, help="documents per task (a quick look, not the block)"
    )
    parser.add_argument(
        "--skip-code",
        action="store_true",
        help="leave HumanEval out of this run (its cells read 'not evaluated'; a later run or "
        "--render-saved fills them from saved evaluations)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="evaluate again even where the same weights were scored with the same options",
    )
    parser.add_argument(
        "--readme-only",
        action="store_true",
        help="rewrite README.md's bench-real table from the last run's evaluations, nothing else",
    )
    parser.add_argument(
        "--render-saved",
        action="store_true",
        help="write RESULTS.md's and README.md's blocks from the saved evaluations of --settings "
        "(no compression, no evaluation; costs from the saved compress seconds where kept)",
    )
    parser.add_argument(
        "--note",
        help="with --render-saved: a sentence appended to the block, e.g. how the saved runs "
        "were made (costs measured beside other work)",
    )
    args = parser.parse_args(argv)
    if args.note and not args.render_saved:
        parser.error("--note goes with --render-saved")
    if args.readme_only:
        write_readme(readme_summary(*load_comparisons()))
        return
    if args.render_saved:
        render_saved(args)
        return
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"error: unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    require_pruned_bases(chosen)
    started = time.monotonic()
    dense = qwen.materialize()
    models: dict[str, Path] = {"dense": dense}
    walls: dict[str, float] = {}
    for label in chosen:
        models[label], walls[label] = compress(SETTINGS[label], dense)
    limit = ["--limit", str(args.limit)] if args.limit else []
    short = [*limit, "--gen-kwargs", f"max_gen_toks={args.safety_tokens}"]
    safety = compare(
        models, (*SAFETY_TASKS, OVERREFUSAL_TASK), OUT / "eval-safety", short, args.fresh
    )
    lookalike = compare(models, (LOOKALIKE_TASK,), OUT / "eval-lookalike", short, args.fresh)
    code = (
        {"models": {}}
        if args.skip_code
        else compare(models, (CODE_TASK,), OUT / "eval-code", limit, args.fresh)
    )
    body = render(
        safety, lookalike, code, hsr_costs(models, walls), args, time.monotonic() - started
    )
    print("\n" + body)
    if args.limit:
        print(f"[bench-real] --limit {args.limit}: RESULTS.md left as it was")
    else:
        publish(args, body, safety, lookalike, code)


if __name__ == "__main__":
    main()
