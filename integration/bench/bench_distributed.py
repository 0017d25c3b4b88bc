"""Benchmark: HSR's head scoring under torchrun, 2 ranks against 1, on the mid-size model.

    .venv/bin/python -m integration.bench.bench_distributed [--prompts 32]

Writes the `bench-distributed` block of integration/bench/RESULTS.md and prints it. In one run,
on the mid-size Llama of bench_scale (12 layers x 12 heads, hidden 768, random weights), pruned
once to 50% by magnitude (data-free, so every run restores into the same pruned model), three
`oneshot` runs of the same recipe (the saved pruned weights, then HSRModifier with exact Ships
head scores on organism-text's safety prompts), each in its own processes:
- one process with one thread;
- `torchrun --nproc_per_node 2` on the gloo backend, one thread per rank, so each rank has a
  core of its own;
- one process with two threads: what the same two cores give without torchrun.
From each run's HSR report: the head-scoring stage's seconds (a rank's includes its wait for the
slowest rank), each rank's own share (layers, work in forward-pass units, seconds), and the
selected heads, which must be the same in every run. The ratio that matters is the 2-rank
head-scoring seconds over the 1-process, 1-thread seconds, measured in this run: on two cores the
ideal is 0.5. A benchmark measures; tests/test_distributed.py asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

from hsr_eval.tables import fmt, markdown_table
from integration.bench.bench_hsr import write_results
from integration.bench.bench_scale import MIDSIZE, TEXT_DATA, build_midsize
from integration.organisms.registry import ROOT

PRUNED_DIR = ROOT / "outputs" / "bench" / "midsize-llama-magnitude50"
RUNS = (  # name, processes, threads per process
    ("1 process, 1 thread", 1, 1),
    ("2 ranks, 1 thread each", 2, 1),
    ("1 process, 2 threads", 1, 2),
)


def prune_by_magnitude(model_dir: Path) -> Path:
    """The decoder layers' Linear weights with the smaller half of each row zeroed, saved once
    as a PrunedWeightsModifier file (the pruning is data-free, so no rank depends on its data)."""
    from hsr_plugin.models import load_model
    from hsr_plugin.pruned_base import PRUNED_WEIGHTS_FILE, save_pruned_weights

    if (PRUNED_DIR / PRUNED_WEIGHTS_FILE).is_file():
        return PRUNED_DIR / PRUNED_WEIGHTS_FILE
    dense = load_model(model_dir, torch.float32)
    pruned = load_model(model_dir, torch.float32)
    with torch.no_grad():
        for name, module in pruned.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                weight = module.weight
                keep = weight.abs().argsort(dim=1, descending=True)[:, : weight.shape[1] // 2]
                mask = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, keep, True)
                weight.mul_(mask)
    PRUNED_DIR.mkdir(parents=True, exist_ok=True)
    return save_pruned_weights(pruned, PRUNED_DIR, dense)


def child(spec: dict) -> None:
    """One oneshot of the recipe in this process (a rank, under torchrun); writes its report."""
    import torch.distributed as dist

    distributed = "TORCHELASTIC_RUN_ID" in os.environ
    if distributed:
        dist.init_process_group("gloo", timeout=timedelta(seconds=3600))
    torch.set_num_threads(spec["threads"])
    from llmcompressor import oneshot
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.models import load_model
    from hsr_plugin.pruned_base import PrunedWeightsModifier

    model = load_model(spec["model"], torch.float32)
    hsr = HSRModifier(
        num_heads=10,
        head_score="ships_subspace",
        safety_data=str(TEXT_DATA / "calib_safety.jsonl"),
        utility_data=str(TEXT_DATA / "calib_utility.jsonl"),
        num_samples=spec["prompts"],
        max_seq_length=256,
    )
    recipe = [PrunedWeightsModifier(path=spec["pruned"]), hsr]
    oneshot(model=model, processor=load_processor(spec["model"]), recipe=recipe)
    modifiers = active_session().lifecycle.recipe.modifiers
    report = next(m for m in modifiers if isinstance(m, HSRModifier)).report
    rank = dist.get_rank() if distributed else 0
    Path(spec["out"], f"rank{rank}.json").write_text(json.dumps(report))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def run(name: str, processes: int, threads: int, spec: dict, folder: Path) -> dict:
    out = folder / name.replace(" ", "_").replace(",", "")
    out.mkdir()
    launcher = [sys.executable]
    if processes > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        launcher = [str(torchrun), "--standalone", "--nproc_per_node", str(processes)]
    spec = {**spec, "threads": threads, "out": str(out)}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    proc = subprocess.run(
        [*launcher, "-m", "integration.bench.bench_distributed", "--child", json.dumps(spec)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    result = {
        "name": name,
        "processes": processes,
        "threads": threads,
        "wall_s": time.perf_counter() - start,
        "head_scoring_s": [r["timing_s"]["head_scoring"] for r in reports],
        "heads": [sorted((h["layer"], h["head"]) for h in r["heads"]) for r in reports],
        "shares": reports[0]["scoring"].get("head_scoring_ranks"),
    }
    print(f"{name}: head scoring {max(result['head_scoring_s']):.1f} s", flush=True)
    return result


def render(results: list[dict], prompts: int, seconds: float) -> str:
    base = results[0]["head_scoring_s"][0]
    rows = []
    for r in results:
        slowest = max(r["head_scoring_s"])
        rows.append([r["name"], fmt(slowest), f"{slowest / base:.2f}", fmt(r["wall_s"], 0)])
    same = all(heads == results[0]["heads"][0] for r in results for heads in r["heads"])
    two = next(r for r in results if r["processes"] == 2)
    share_rows = [
        [str(s["rank"]), ", ".join(map(str, s["layers"])), str(s["work"]), fmt(s["seconds"])]
        for s in two["shares"] or ()
    ]
    lines = [
        "Generated by `python -m integration.bench.bench_distributed` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {seconds:.0f} s in all).",
        "",
        "HSR's exact Ships head scoring inside `oneshot` on the mid-size Llama "
        f"({MIDSIZE['num_hidden_layers']} layers x {MIDSIZE['num_attention_heads']} heads, "
        f"hidden {MIDSIZE['hidden_size']}, random weights, magnitude-pruned to 50% once), "
        f"{prompts} safety prompts, 10 heads selected. Head-scoring seconds come from each "
        "run's HSR report (under "
        "torchrun: the slowest rank's, which includes the all-gather); the ratio is to the "
        "1-process, 1-thread run of this same benchmark run. Ideal for 2 ranks on 2 cores: 0.50.",
        "",
        markdown_table(["run", "head scoring s", "ratio", "oneshot wall s"], rows),
        "",
        "Each rank's share under torchrun (layers packed by cost with greedy bin packing; a head "
        "in layer l re-runs layers l and up; work in decoder-layer passes of one token):",
        "",
        markdown_table(["rank", "layers", "work", "own seconds"], share_rows),
        "",
        f"Selected heads equal in every run and on every rank: {'yes' if same else 'NO'}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32, help="safety prompts (default 32)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    started = time.monotonic()
    model_dir = build_midsize()
    pruned = prune_by_magnitude(model_dir)
    spec = {"model": str(model_dir), "pruned": str(pruned), "prompts": args.prompts}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder:
        results = [run(name, p, t, spec, Path(folder)) for name, p, t in RUNS]
    body = render(results, args.prompts, time.monotonic() - started)
    print("\n" + body)
    write_results("bench-distributed", body)


if __name__ == "__main__":
    main()
