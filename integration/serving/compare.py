"""`hsr-compare`: serve each model with vLLM, score it with the hsr_safety lm-eval tasks, compare.

    .venv-serve/bin/hsr-compare --out outputs/eval \\
        --models dense=integration/organisms/organism-text \\
                 wanda=outputs/wanda wanda+hsr=outputs/wanda_hsr

The command comes with the hsr-eval distribution and runs where vLLM and lm-eval are installed
(`make serve-venv`), beside `hsr` of the compression virtualenv. It runs lm-eval on the installed
tasks (`hsr-eval-tasks` prints their folder).

For every model: measure its sparsity (zeros in the language model's Linear weights, read from
the safetensors), start `vllm serve`, run `lm-eval run --model local-chat-completions` on the task
group, stop the server. Then write OUT/comparison.md and OUT/comparison.json: ASR, refusal,
over-refusal, utility, sparsity and the RSR of each `<name>+hsr` model against `<name>` and the
dense model. Backends without a server: `hf` (transformers), `vllm` (offline engine),
`hf-multimodal` (VLMs on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hsr_eval.common import language_sparsity_counts, write_json_atomic, write_text_atomic
from hsr_eval.launch import (
    ServeConfig,
    ServeError,
    free_port,
    model_max_len,
    start_server,
)
from hsr_eval.outcomes import (
    METRICS,
    outcome_maps,
    paired_statistics,
    pruned_label,
    rate_counts,
    read_lm_eval_samples,
)
from hsr_eval.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from hsr_eval.tables import comparison_table
from hsr_eval.tasks import TASKS_DIR
from hsr_eval.tasks.judges import describe_judges

BACKENDS = ("vllm-serve", "hf", "vllm", "hf-multimodal")
INTERVALS = {
    "rates": "95% Wilson score interval (k of n in counts)",
    "rsr": f"95% paired percentile bootstrap over prompts, {BOOTSTRAP_RESAMPLES} resamples, "
    f"seed {BOOTSTRAP_SEED}",
    "hsr_vs_pruned": "exact two-sided McNemar test on the prompts where the two models differ",
}


@dataclass
class ModelSpec:
    label: str
    path: str


def parse_models(items: list[str]) -> list[ModelSpec]:
    specs = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"error: --models takes LABEL=DIR pairs, got {item!r}")
        if label in {s.label for s in specs}:
            raise SystemExit(f"error: label {label!r} given twice")
        specs.append(ModelSpec(label, path))
    return specs


# ----------------------------------------------------------------------------- sparsity
def language_sparsity(model_dir: str | Path) -> float | None:
    """Share of zeros in the language decoder's 2-D Linear weights, read from the safetensors."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None

    def weights():
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)

    zeros, total = language_sparsity_counts(weights())
    return zeros / total if total else None


# ----------------------------------------------------------------------------- lm-eval
def lm_eval_command(
    model_args: str,
    model_type: str,
    tasks: str,
    out_dir: Path,
    limit: int | None,
    chat: bool = True,
    batch_size: str = "16",
    extra: list[str] | None = None,
) -> list[str]:
    exe = Path(sys.executable).with_name("lm-eval")
    cmd = [
        str(exe) if exe.exists() else "lm-eval",
        "run",
        "--model",
        model_type,
        "--model_args",
        model_args,
        "--include_path",
        str(TASKS_DIR),
        "--tasks",
        tasks,
        "--output_path",
        str(out_dir),
        "--log_samples",
        "--batch_size",
        batch_size,
    ]
    if chat:
        cmd.append("--apply_chat_template")
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd + list(extra or [])


def run_lm_eval(cmd: list[str], log_path: Path, judge_log: Path | None = None) -> Path:
    print("[eval] $ " + " ".join(cmd), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if judge_log is not None:
        # every verdict, with the guard's hazard categories, one JSON line each (judges.py)
        judge_log.unlink(missing_ok=True)
        env["HSR_JUDGE_LOG"] = str(judge_log)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out_dir = Path(cmd[cmd.index("--output_path") + 1])
    started = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"lm-eval failed with code {code} (log {log_path}):\n{tail}")
    results = [p for p in out_dir.rglob("results_*.json") if p.stat().st_mtime >= started - 1]
    if not results:
        raise RuntimeError(f"lm-eval wrote no results_*.json under {out_dir} (log {log_path})")
    return max(results, key=lambda p: p.stat().st_mtime)


def extract_metrics(results: dict) -> dict:
    """The comparison's rates, the number of documents of every task, and every task's metrics."""
    out: dict = {}
    per_task = results.get("results", {})
    for key, (tasks, metric) in METRICS.items():
        task = next((t for t in tasks if t in per_task), None)
        if task is None:
            continue
        value = per_task[task].get(f"{metric},none")
        out[key] = None if value is None or value == "N/A" else float(value)
    n = {}
    for task, samples in results.get("n-samples", {}).items():
        n[task] = samples.get("effective", samples.get("original"))
    out["n"] = n
    out["tasks"] = {
        task: {
            name.split(",")[0]: value
            for name, value in metrics.items()
            if name.endswith(",none") and "_stderr" not in name and isinstance(value, int | float)
        }
        for task, metrics in per_task.items()
    }
    return out


def unsafe_categories(judge_log: Path) -> dict[str, int]:
    """How often the harm judge named each hazard category (Llama Guard's S1..S14)."""
    counts: dict[str, int] = {}
    if not judge_log.is_file():
        return counts
    for line in judge_log.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("question") == "harmful" and row.get("harm_unsafe"):
            for category in row.get("harm_categories") or ():
                counts[category] = counts.get(category, 0) + 1
    return dict(sorted(counts.items()))


def evaluate_model(
    spec: ModelSpec,
    backend: str,
    tasks: str,
    out: Path,
    limit: int | None,
    port: int | None,
    device: str,
    metadata: str | None = None,
    gen_kwargs: str | None = None,
    num_concurrent: int = 8,
) -> dict:
    model_out = out / spec.label.replace("/", "_")
    model_out.mkdir(parents=True, exist_ok=True)
    tokenizer_args = f"tokenizer={spec.path},tokenizer_backend=huggingface"
    meta = ["--metadata", metadata] if metadata else []
    if gen_kwargs:
        meta += ["--gen_kwargs", gen_kwargs]
    judge_log = model_out / "judgments.jsonl"
    if backend == "vllm-serve":
        config = ServeConfig(
            model=spec.path,
            port=port or free_port(),
            served_model_name=spec.label,
            log_path=str(model_out / "vllm_serve.log"),
        )
        with start_server(config) as server:
            args = (
                f"model={spec.label},base_url={server.url}/v1/chat/completions,num_concurrent={num_concurrent},"
                f"max_retries=3,timeout=120,{tokenizer_args}"
            )
            results_path = run_lm_eval(
                lm_eval_command(
                    args,
                    "local-chat-completions",
                    tasks,
                    model_out,
                    limit,
                    batch_size="1",
                    extra=meta,
                ),
                model_out / "lm_eval.log",
                judge_log,
            )
    elif backend == "hf":
        args = f"pretrained={spec.path},dtype=float32"
        results_path = run_lm_eval(
            lm_eval_command(args, "hf", tasks, model_out, limit, extra=["--device", device, *meta]),
            model_out / "lm_eval.log",
            judge_log,
        )
    elif backend == "hf-multimodal":
        args = f"pretrained={spec.path},dtype=float32,max_images=1"
        results_path = run_lm_eval(
            lm_eval_command(
                args,
                "hf-multimodal",
                tasks,
                model_out,
                limit,
                batch_size="1",
                extra=["--device", device, *meta],
            ),
            model_out / "lm_eval.log",
            judge_log,
        )
    elif backend == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        # the model's own context limit (capped), as `vllm serve` gets it from launch.py
        args = (
            f"pretrained={spec.path},dtype=float32,enforce_eager=True,"
            f"max_model_len={model_max_len(spec.path, cap=512)},"
            f"kv_cache_memory_bytes={256 * 1024 * 1024}"
        )
        results_path = run_lm_eval(
            lm_eval_command(args, "vllm", tasks, model_out, limit, batch_size="auto", extra=meta),
            model_out / "lm_eval.log",
            judge_log,
        )
    else:
        raise SystemExit(f"error: unknown backend {backend!r} ({', '.join(BACKENDS)})")
    metrics = extract_metrics(json.loads(results_path.read_text()))
    outcomes, splits = outcome_maps(read_lm_eval_samples(results_path))
    return {
        "path": spec.path,
        **metrics,
        **rate_counts(outcomes, splits),
        "outcomes": outcomes,
        "sparsity": language_sparsity(spec.path),
        "judge": describe_judges(),
        "unsafe_categories": unsafe_categories(judge_log),
        "backend": backend,
        "lm_eval_results": str(results_path),
    }


# ----------------------------------------------------------------------------- comparison
def compute_rsr(models: dict[str, dict], dense_label: str = "dense") -> dict[str, dict]:
    """RSR = (ASR_pruned - ASR_hsr) / (ASR_pruned - ASR_dense) for every `<pruned>+hsr[-<setting>]`
    label,
    on the text ASR (the ASR on pictures when only picture tasks ran: `"on"` says which)."""
    rsr = {}
    dense = models.get(dense_label)
    for label in models:
        base = pruned_label(label)
        if base is None:
            continue
        entry = {"pruned": base, "dense": dense_label, "value": None, "reason": None}
        if dense is None or base not in models:
            entry["reason"] = f"needs models labelled {dense_label!r} and {base!r}"
        else:
            # the text ASR, or the ASR on pictures for a run of picture tasks only
            key = "asr" if dense.get("asr") is not None else "asr_vision"
            entry["on"] = key
            a_d, a_p, a_h = dense.get(key), models[base].get(key), models[label].get(key)
            if None in (a_d, a_p, a_h):
                entry["reason"] = "ASR missing"
            elif abs(a_p - a_d) < 1e-9:
                entry["reason"] = "pruning did not change ASR, so RSR is undefined"
            else:
                entry["value"] = (a_p - a_h) / (a_p - a_d)
        rsr[label] = entry
    return rsr


def with_paired_statistics(rsr: dict[str, dict], paired: dict[str, dict]) -> dict[str, dict]:
    """RSR entries with RSR's bootstrap interval and the McNemar test against the pruned model,
    on the ASR the RSR was computed on; the paired statistics of the other ASR (pictures beside
    text) go under `vision`."""
    for label, entry in rsr.items():
        stats = paired.get(label, {})
        key = entry.get("on", "asr")
        if key in stats:
            entry["mcnemar_vs_pruned"] = stats[key]["mcnemar_vs_pruned"]
            if "rsr_bootstrap" in stats[key]:
                entry["bootstrap"] = stats[key]["rsr_bootstrap"]
                entry["ci95"] = entry["bootstrap"]["ci95"]
        if key == "asr" and "asr_vision" in stats:
            entry["vision"] = stats["asr_vision"]
    return rsr


def comparison_markdown(comparison: dict) -> str:
    return comparison_table(comparison) + "\n"


def run_evaluation(
    models: list[ModelSpec],
    out: str | Path,
    backend: str = "vllm-serve",
    tasks: str = "hsr_safety",
    limit: int | None = None,
    port: int | None = None,
    device: str = "cpu",
    metadata: str | None = None,
    gen_kwargs: str | None = None,
    num_concurrent: int = 8,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in models:
        if not (Path(spec.path) / "config.json").is_file():
            raise SystemExit(
                f"error: {spec.label}: {spec.path} is not a model directory (no config.json)"
            )
    results = {}
    for index, spec in enumerate(models, start=1):
        print(f"[eval] ({index}/{len(models)}) {spec.label}: {spec.path} via {backend}", flush=True)
        started = time.monotonic()
        results[spec.label] = evaluate_model(
            spec, backend, tasks, out, limit, port, device, metadata, gen_kwargs, num_concurrent
        )
        print(
            f"[eval] {spec.label}: ASR {results[spec.label].get('asr')} utility "
            f"{results[spec.label].get('utility')} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    comparison = {
        "models": results,
        "rsr": with_paired_statistics(compute_rsr(results), paired_statistics(results)),
        "tasks": tasks,
        "gen_kwargs": gen_kwargs,
        "intervals": INTERVALS,
    }
    write_json_atomic(out / "comparison.json", comparison)
    write_text_atomic(out / "comparison.md", comparison_markdown(comparison))
    print(comparison_markdown(comparison))
    print(f"[eval] wrote {out / 'comparison.md'} and {out / 'comparison.json'}")
    return comparison


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="LABEL=DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--backend", choices=BACKENDS, default="vllm-serve")
    parser.add_argument("--tasks", default="hsr_safety")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--device", default="cpu", help="device for the hf backends")
    parser.add_argument(
        "--metadata",
        help='JSON passed to the tasks, e.g. \'{"data_dir": "integration/organisms/data/vl"}\'',
    )
    parser.add_argument(
        "--gen-kwargs",
        help="lm-eval's --gen_kwargs for every task, e.g. max_gen_toks=128 (a shorter answer "
        "than a benchmark's protocol: say so wherever its numbers go)",
    )
    parser.add_argument(
        "--num-concurrent",
        type=int,
        default=8,
        help="requests in flight to each vllm serve (vllm-serve backend; default 8)",
    )
    args = parser.parse_args(argv)
    if args.num_concurrent < 1:
        parser.error("--num-concurrent must be at least 1")
    if (
        args.backend in ("vllm-serve", "vllm")
        and shutil.which("vllm") is None
        and not Path(sys.executable).with_name("vllm").exists()
    ):
        print(
            "error: vllm is not installed here: run hsr-compare where it is (pip install "
            "'hsr-eval[vllm]' in a virtualenv of its own; in a checkout, make serve-venv), "
            "or pick --backend hf",
            file=sys.stderr,
        )
        return 2
    try:
        run_evaluation(
            parse_models(args.models),
            args.out,
            args.backend,
            args.tasks,
            args.limit,
            args.port,
            args.device,
            args.metadata,
            args.gen_kwargs,
            args.num_concurrent,
        )
    except (ServeError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
