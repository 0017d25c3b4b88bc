"""`hsr-compare`: serve each model with vLLM, score it with the hsr_safety lm-eval tasks, compare.

    .venv-serve/bin/hsr-compare --out outputs/eval \\
        --models dense=integration/organisms/organism-text \\
                 wanda=outputs/wanda wanda+hsr=outputs/wanda_hsr

The command lives in integration/serving/compare.py and runs in the serving virtualenv (vLLM and
lm-eval; `make serve-venv`), beside `hsr` of the compression virtualenv.

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

from hsr_plugin.common import language_sparsity_counts, write_json_atomic, write_text_atomic
from hsr_plugin.tables import comparison_table
from integration.lm_eval_tasks.hsr_safety.judge import judge_name
from integration.serving.launch import ServeConfig, ServeError, free_port, start_server

TASKS_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks"
BACKENDS = ("vllm-serve", "hf", "vllm", "hf-multimodal")
METRICS = {  # comparison key -> (task, lm-eval metric)
    "asr": ("hsr_harmful", "attack_success_rate"),
    "refusal_rate": ("hsr_harmful", "refusal_rate"),
    "over_refusal_rate": ("hsr_overrefusal", "over_refusal_rate"),
    "utility": ("hsr_utility", "utility_accuracy"),
    "asr_vision": ("hsr_harmful_vision", "attack_success_rate"),
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


def run_lm_eval(cmd: list[str], log_path: Path) -> Path:
    print("[eval] $ " + " ".join(cmd), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
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
    out, n = {}, {}
    for key, (task, metric) in METRICS.items():
        task_results = results.get("results", {}).get(task)
        if task_results is None:
            continue
        value = task_results.get(f"{metric},none")
        out[key] = None if value is None or value == "N/A" else float(value)
        samples = results.get("n-samples", {}).get(task, {})
        n[task] = samples.get("effective", samples.get("original"))
    out["n"] = n
    return out


def evaluate_model(
    spec: ModelSpec,
    backend: str,
    tasks: str,
    out: Path,
    limit: int | None,
    port: int | None,
    device: str,
    metadata: str | None = None,
) -> dict:
    model_out = out / spec.label.replace("/", "_")
    model_out.mkdir(parents=True, exist_ok=True)
    tokenizer_args = f"tokenizer={spec.path},tokenizer_backend=huggingface"
    meta = ["--metadata", metadata] if metadata else []
    if backend == "vllm-serve":
        config = ServeConfig(
            model=spec.path,
            port=port or free_port(),
            served_model_name=spec.label,
            log_path=str(model_out / "vllm_serve.log"),
        )
        with start_server(config) as server:
            args = (
                f"model={spec.label},base_url={server.url}/v1/chat/completions,num_concurrent=8,"
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
            )
    elif backend == "hf":
        args = f"pretrained={spec.path},dtype=float32"
        results_path = run_lm_eval(
            lm_eval_command(args, "hf", tasks, model_out, limit, extra=["--device", device, *meta]),
            model_out / "lm_eval.log",
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
        )
    elif backend == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        args = (
            f"pretrained={spec.path},dtype=float32,enforce_eager=True,max_model_len=512,"
            f"kv_cache_memory_bytes={256 * 1024 * 1024}"
        )
        results_path = run_lm_eval(
            lm_eval_command(args, "vllm", tasks, model_out, limit, batch_size="auto", extra=meta),
            model_out / "lm_eval.log",
        )
    else:
        raise SystemExit(f"error: unknown backend {backend!r} ({', '.join(BACKENDS)})")
    metrics = extract_metrics(json.loads(results_path.read_text()))
    return {
        "path": spec.path,
        **metrics,
        "sparsity": language_sparsity(spec.path),
        "judge": judge_name(),
        "backend": backend,
        "lm_eval_results": str(results_path),
    }


# ----------------------------------------------------------------------------- comparison
def compute_rsr(models: dict[str, dict], dense_label: str = "dense") -> dict[str, dict]:
    """RSR = (ASR_pruned - ASR_hsr) / (ASR_pruned - ASR_dense) for every `<pruned>+hsr` label."""
    rsr = {}
    dense = models.get(dense_label)
    for label in models:
        if not label.endswith("+hsr"):
            continue
        base = label[: -len("+hsr")]
        entry = {"pruned": base, "dense": dense_label, "value": None, "reason": None}
        if dense is None or base not in models:
            entry["reason"] = f"needs models labelled {dense_label!r} and {base!r}"
        else:
            a_d, a_p, a_h = dense.get("asr"), models[base].get("asr"), models[label].get("asr")
            if None in (a_d, a_p, a_h):
                entry["reason"] = "ASR missing"
            elif abs(a_p - a_d) < 1e-9:
                entry["reason"] = "pruning did not change ASR, so RSR is undefined"
            else:
                entry["value"] = (a_p - a_h) / (a_p - a_d)
        rsr[label] = entry
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
            spec, backend, tasks, out, limit, port, device, metadata
        )
        print(
            f"[eval] {spec.label}: ASR {results[spec.label].get('asr')} utility "
            f"{results[spec.label].get('utility')} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    comparison = {"models": results, "rsr": compute_rsr(results), "tasks": tasks}
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
    args = parser.parse_args(argv)
    if (
        args.backend in ("vllm-serve", "vllm")
        and shutil.which("vllm") is None
        and not Path(sys.executable).with_name("vllm").exists()
    ):
        print(
            "error: vllm is not installed here: run .venv-serve/bin/hsr-compare (make serve-venv)",
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
        )
    except (ServeError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
