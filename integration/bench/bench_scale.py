"""Benchmark: HSR's scoring cost at scale, and the first-order head score against exact Ships.

    .venv/bin/python -m integration.bench.bench_scale [--parts attribution,stages,agreement]

Writes the `bench-scale` block of integration/bench/RESULTS.md and prints it. In one run:
1. head attribution on organism-text, organism-vl and a mid-size Llama built from a config
   (12 layers, 12 heads, hidden 768, random weights, 64 safety prompts): forward-pass equivalents
   and wall time of the naive loop (one full pass per head), the cached and batched exact path
   and the first-order path, as ratios to the naive loop; whether the exact path's scores and
   ranking equal the naive loop's;
2. on the mid-size model, one `oneshot` per row, each in its own process: the HSR stage's time
   (from its report) over the pruning stage's (between llm-compressor's own "Inferred ... for
   <pruning modifier>" and "... for HSRModifier" log lines), for Wanda 50% and SparseGPT 50%, with
   the exact and the first-order head score; the peak RSS of prune-only against prune + HSR; and
   the device every phase ran on;
3. agreement of the first-order score with exact Ships (top-h overlap, Spearman's rho) and, on
   organism-text, the RSR each reaches at the same restored count (the larger restoration is
   capped with `max_restored_per_10k`), from the one scorer on the held-out prompts.
A benchmark measures; the tests assert. Absolute times on these machines are noisy: read ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from hsr_eval.tables import fmt, markdown_table, percent
from integration.bench.bench_hsr import RESULTS, write_results
from integration.organisms.registry import ORGANISMS, ROOT

MIDSIZE_DIR = ROOT / "outputs" / "bench" / "midsize-llama"
MIDSIZE = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    max_position_embeddings=512,
)
TEXT_DATA = ORGANISMS["text"].data_dir


# ----------------------------------------------------------------------------- models
def build_midsize() -> Path:
    """A Llama with the mid-size shape and random weights, with organism-text's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (MIDSIZE_DIR / "config.json").is_file():
        return MIDSIZE_DIR
    tokenizer = AutoTokenizer.from_pretrained(ORGANISMS["text"].model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **MIDSIZE,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    MIDSIZE_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(MIDSIZE_DIR)
    tokenizer.save_pretrained(MIDSIZE_DIR)
    return MIDSIZE_DIR


def _load(model_dir: Path):
    from hsr_plugin.models import load_model

    return load_model(model_dir, torch.float32)


def _safety_samples(model_dir: Path, data_dir: Path, rows: int):
    from hsr_plugin.calibration import load_processor, render_samples
    from hsr_plugin.conversations import load_conversations

    processor = load_processor(str(model_dir))
    conversations = load_conversations(str(data_dir / "calib_safety.jsonl"), rows, 0)
    tokenizer = getattr(processor, "tokenizer", processor)
    return render_samples(conversations, processor, 256), tokenizer.pad_token_id or 0


# ----------------------------------------------------------------------------- part 1
def attribution_costs(
    name: str, model_dir: Path, data_dir: Path, rows: int, naive_loop: bool = True
) -> dict:
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.exact_head_scores import score_heads
    from hsr_plugin.score_records import AttributionCost
    from integration.bench.naive_attribution import naive_head_scores

    model = _load(model_dir)
    samples, pad = _safety_samples(model_dir, data_dir, rows)
    blocks = find_attention_blocks(model)
    units = sum(b.num_heads for b in blocks)
    naive, naive_s = None, None
    if naive_loop:
        start = time.perf_counter()
        naive = naive_head_scores(
            model, blocks, samples, "ships_subspace", batch_size=8, pad_id=pad
        )
        naive_s = time.perf_counter() - start
    timed = {}
    for method in ("ships_subspace", "attribution"):
        cost = AttributionCost()
        start = time.perf_counter()
        scores = score_heads(
            model, blocks, samples, method, batch_size=8, pad_id=pad, progress=False, cost=cost
        )
        timed[method] = (scores, cost.forward_equivalents, time.perf_counter() - start)
    exact = timed["ships_subspace"][0]
    rel = (
        max(
            abs(a.score - b.score) / max(abs(b.score), 1e-12)
            for a, b in zip(exact, naive, strict=True)
        )
        if naive is not None
        else None
    )
    print(f"{name}: naive {naive_s}s, exact {timed['ships_subspace'][2]:.1f}s, "
          f"first-order {timed['attribution'][2]:.1f}s", flush=True)  # fmt: skip
    return {
        "model": name,
        "heads": units,
        "layers": len(blocks),
        "prompts": len(samples),
        "naive": {"fpe": units + 1, "s": naive_s},
        "exact": {"fpe": timed["ships_subspace"][1], "s": timed["ships_subspace"][2]},
        "first_order": {"fpe": timed["attribution"][1], "s": timed["attribution"][2]},
        "identical_ranking": None if naive is None else _ranking(exact) == _ranking(naive),
        "max_rel_diff": rel,
        "agreement": agreement(timed["attribution"][0], exact),
    }


def _ranking(scores) -> list[tuple[int, int]]:
    return [(s.layer, s.head) for s in sorted(scores, key=lambda s: (-s.score, s.layer, s.head))]


def _ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean rank), for Spearman's rho."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def agreement(first_order, exact) -> dict:
    by_key = {(s.layer, s.head): s.score for s in exact}
    keys = list(by_key)
    fo = {(s.layer, s.head): s.score for s in first_order}
    top = {}
    for h in (4, 8, 10):
        if h <= len(keys):
            top[h] = len(set(_ranking(first_order)[:h]) & set(_ranking(exact)[:h]))
    return {"top": top, "rho": spearman([fo[k] for k in keys], [by_key[k] for k in keys])}


# ----------------------------------------------------------------------------- part 2
STAGES = [
    ("wanda", None),
    ("wanda", "ships_subspace"),
    ("wanda", "attribution"),
    ("sparsegpt", "ships_subspace"),
    ("sparsegpt", "attribution"),
]


def child(spec: dict) -> dict:
    """One oneshot run in this process: times from the report and from the log, peak RSS."""
    from llmcompressor import oneshot
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from loguru import logger
    from transformers import AutoTokenizer

    from hsr_plugin import HSRModifier
    from hsr_plugin.oneshot_data import calibration_kwargs

    torch.set_num_threads(spec["threads"])
    records: list[tuple[float, str]] = []
    logger.add(lambda m: records.append((m.record["time"].timestamp(), m.record["message"])))
    model_dir = Path(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    utility = str(TEXT_DATA / "calib_utility.jsonl")
    cls = WandaPruningModifier if spec["pruning"] == "wanda" else SparseGPTModifier
    recipe = [cls(sparsity=0.5, targets=[r"re:.*layers\.\d+$"], ignore=["re:.*lm_head"])]
    if spec["head_score"] is not None:
        recipe.append(
            HSRModifier(
                num_heads=10,
                head_score=spec["head_score"],
                safety_data=str(TEXT_DATA / "calib_safety.jsonl"),
                utility_data=utility,
                num_samples=64,
            )
        )
    model = _load(model_dir)
    start = time.perf_counter()
    oneshot(
        model=model,
        processor=tokenizer,
        recipe=recipe,
        shuffle_calibration_samples=False,
        **calibration_kwargs(utility, tokenizer, 64, 128),
    )
    wall = time.perf_counter() - start

    def stamp(text: str) -> float | None:
        return next((t for t, message in records if text in message), None)

    pruning_name = cls.__name__
    result = {
        **spec,
        "oneshot_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prune_start": stamp(f"for `{pruning_name}`"),
        "prune_end": stamp("for `HSRModifier`"),
        "finalized": stamp("Compression lifecycle finalized"),
        "pruning_device": "cpu" if not torch.accelerator.is_available() else "accelerator",
    }
    if spec["head_score"] is not None:
        mods = active_session().lifecycle.recipe.modifiers
        report = next(m for m in mods if isinstance(m, HSRModifier)).report
        result["timing"] = report["timing_s"]
        result["scoring"] = report["scoring"]
        result["restored"] = report["totals"]["restored"]
    return result


def run_children(threads: int) -> list[dict]:
    model_dir = build_midsize()
    results = []
    for pruning, head_score in STAGES:
        spec = {
            "model": str(model_dir),
            "pruning": pruning,
            "head_score": head_score,
            "threads": threads,
        }
        out = subprocess.run(
            [sys.executable, "-m", "integration.bench.bench_scale", "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        if out.returncode != 0:
            raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{pruning} + {head_score}: oneshot {result['oneshot_s']:.1f}s", flush=True)
        results.append(result)
    return results


# ----------------------------------------------------------------------------- part 3
def rsr_at_same_count(heads: int = 8) -> list[dict]:
    """organism-text, Wanda 50%: exact vs first-order heads, at the same restored count."""
    from transformers import AutoModelForCausalLM

    from hsr_eval.tasks.in_process import TEXT_TASKS, score_model
    from integration.bench.bench_hsr import run_recipe

    organism = ORGANISMS["text"]
    metadata = {"data_dir": str(organism.eval_dir)}

    def score(model, tokenizer, desc):
        return score_model(model, tokenizer, TEXT_TASKS, metadata, desc=desc).summary()

    dense = AutoModelForCausalLM.from_pretrained(organism.model_dir, dtype=torch.float32)
    pruned, tokenizer, _ = run_recipe(organism, "wanda", None)
    rows = [
        {"setting": "dense", **score(dense, tokenizer, "dense")},
        {"setting": "wanda 50%", **score(pruned, tokenizer, "pruned")},
    ]
    runs = {}
    for head_score in ("ships_subspace", "attribution"):
        _, _, report = run_recipe(organism, "wanda", {"num_heads": heads, "head_score": head_score})
        runs[head_score] = report
    count = min(r["totals"]["restored"] for r in runs.values())
    for head_score, report in runs.items():
        hsr = {"num_heads": heads, "head_score": head_score}
        if report["totals"]["restored"] > count:
            params = report["totals"]["language_params"]
            hsr["max_restored_per_10k"] = count * 1e4 / params
        model, _, report = run_recipe(organism, "wanda", hsr)
        label = "exact Ships" if head_score == "ships_subspace" else "first-order"
        rows.append(
            {
                "setting": f"+ HSR h={heads}, {label} heads",
                **score(model, tokenizer, head_score),
                "restored": report["totals"]["restored"],
                "selected": report["selected_heads"],
            }
        )
    return rows


# ----------------------------------------------------------------------------- render
def _ratio(a: float | None, b: float | None) -> str:
    return fmt(a / b, 3) if a is not None and b else "n/a"


def _same(cost: dict) -> str:
    if cost["identical_ranking"] is None:
        return "naive loop not run"
    verdict = "yes" if cost["identical_ranking"] else "NO"
    return f"{verdict} (max rel. diff {cost['max_rel_diff']:.1e})"


def render(costs: list[dict], stages: list[dict], rsr: list[dict], seconds: float) -> str:
    out = []
    if costs:
        out += [
            "**Head attribution cost** (ships_subspace; forward-pass equivalents: decoder-layer "
            "work over one intact pass on the safety prompts, a backward without weight "
            "gradients counting as one; the naive loop is one full pass per head plus one)",
            "",
            markdown_table(
                [
                    "model",
                    "L x H",
                    "prompts",
                    "path",
                    "FPE",
                    "FPE / naive",
                    "s",
                    "s / naive",
                    "same ranking as naive",
                ],  # fmt: skip
                [
                    [
                        c["model"],
                        f"{c['layers']} x {c['heads'] // c['layers']}",
                        c["prompts"],
                        path,
                        fmt(c[key]["fpe"], 2),
                        _ratio(c[key]["fpe"], c["naive"]["fpe"]),
                        "not run" if c[key]["s"] is None else fmt(c[key]["s"], 2),
                        _ratio(c[key]["s"], c["naive"]["s"]),
                        _same(c) if key == "exact" else "",
                    ]
                    for c in costs
                    for key, path in (
                        ("naive", "naive loop"),
                        ("exact", "cached + batched exact"),
                        ("first_order", "first-order"),
                    )
                ],
            ),
            "",
            "**First-order vs exact Ships** (same prompts): top-h heads in common, Spearman's rho",
            "",
            markdown_table(
                ["model", "top-4", "top-8", "top-10", "rho"],
                [
                    [
                        c["model"],
                        *[
                            f"{c['agreement']['top'][h]}/{h}" if h in c["agreement"]["top"] else ""
                            for h in (4, 8, 10)
                        ],
                        fmt(c["agreement"]["rho"], 2),
                    ]
                    for c in costs
                ],
            ),
            "",
        ]
    if stages:
        prune_only = next(s for s in stages if s["head_score"] is None)

        def stage_row(s):
            hsr = sum(s["timing"].values())
            prune = s["prune_end"] - s["prune_start"]
            return [
                f"{s['pruning']} 50% + HSR ({s['head_score']})",
                fmt(prune, 1),
                fmt(hsr, 1),
                _ratio(hsr, prune),
                fmt(s["timing"]["head_scoring"], 1),
                fmt(s["scoring"]["head_scoring_forward_equivalents"], 2),
                f"{s['peak_rss_mb']:.0f}",
                _ratio(s["peak_rss_mb"], prune_only["peak_rss_mb"])
                if s["pruning"] == "wanda"
                else "",
                f"HSR {s['scoring']['device']}, pruning {s['pruning_device']}",
            ]

        out += [
            f"**Mid-size model** (Llama {MIDSIZE['num_hidden_layers']} layers x "
            f"{MIDSIZE['num_attention_heads']} heads, hidden {MIDSIZE['hidden_size']}, random "
            "weights; 64 safety prompts, HSR h=10; one `oneshot` per row, each in its own "
            "process). HSR stage = the phases of its report; pruning stage = from llm-compressor's "
            "log line that starts the pruning modifier's pipeline to the one that starts HSR's.",
            "",
            markdown_table(
                [
                    "run",
                    "pruning stage s",
                    "HSR stage s",
                    "HSR / pruning",
                    "head scoring s",
                    "head scoring FPE",
                    "peak RSS MB",
                    "RSS / prune-only",
                    "devices",
                ],  # fmt: skip
                [stage_row(s) for s in stages if s["head_score"] is not None],
            ),
            "",
            f"Prune-only (Wanda 50%) peak RSS: {prune_only['peak_rss_mb']:.0f} MB.",
            "",
        ]
    if rsr:
        dense, pruned = rsr[0], rsr[1]
        lost = dense["refusal"] - pruned["refusal"]
        out += [
            "**RSR at the same restored count** (organism-text, Wanda 50%, held-out prompts, "
            "the one scorer)",
            "",
            markdown_table(
                [
                    "setting",
                    "refusal %",
                    "RSR",
                    "over-refusal %",
                    "utility %",
                    "restored",
                    "heads",
                ],  # fmt: skip
                [
                    [
                        r["setting"],
                        percent(r["refusal"]),
                        f"{100 * (r['refusal'] - pruned['refusal']) / lost:.0f}%"
                        if "restored" in r and abs(lost) > 1e-9
                        else "",
                        percent(r["over_refusal"]),
                        percent(r["utility"]),
                        r.get("restored", ""),
                        " ".join(f"L{a}H{b}" for a, b in r.get("selected", [])),
                    ]
                    for r in rsr
                ],
            ),
            "",
        ]
    out.append(
        f"_Generated by `python -m integration.bench.bench_scale` on {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{'an accelerator' if torch.accelerator.is_available() else 'no accelerator'}, "
        f"{torch.get_num_threads()} torch thread(s), in {seconds:.0f} s._"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="attribution,stages,agreement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    started = time.monotonic()
    costs, stages, rsr = [], [], []
    if "attribution" in parts:
        costs.append(attribution_costs("organism-text", ORGANISMS["text"].model_dir, TEXT_DATA, 64))
        vl = ORGANISMS["vl"]  # its calibration files embed their pictures
        costs.append(attribution_costs("organism-vl", vl.model_dir, vl.data_dir, 32))
        costs.append(attribution_costs("mid-size Llama", build_midsize(), TEXT_DATA, 64))
    if "stages" in parts:
        stages = run_children(args.threads)
    if "agreement" in parts:
        rsr = rsr_at_same_count()
    block = "bench-scale"
    if parts == {"smollm2"}:
        # SmolLM2-135M with its safety adapter: its naive loop (271 full passes) is left out
        sm = ORGANISMS["smollm2"]
        if not sm.model_dir.is_dir():
            raise SystemExit("materialize SmolLM2 first: make smollm2")
        costs.append(attribution_costs("SmolLM2 + adapter", sm.model_dir, sm.data_dir, 64, False))
        block = "bench-scale-smollm2"
    body = render(costs, stages, rsr, time.monotonic() - started)
    if block != "bench-scale":
        body = body.replace("bench_scale`", f"bench_scale --parts {args.parts}`")
    print("\n" + body)
    write_results(block, body)
    print(f"(see {RESULTS})")


if __name__ == "__main__":
    main()
