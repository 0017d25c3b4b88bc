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

Longer than this package's other modules (about 760 lines) because it is one command's run:
the per-model evaluation, the resumable output folder and the comparison share the run's
settings and failure handling; its input checks (`compare_checks.py`), statistics (`stats.py`),
tables (`tables.py`) and server (`launch.py`) are modules of their own.
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

from hsr_eval.compare_checks import (
    LABEL_PATTERN,
    check_backend,
    check_judges,
    check_model_folder,
    check_parallelism,
    check_task_data,
    leaf_tasks,
    parse_metadata,
    read_task_files,
)
from hsr_eval.files import write_json_atomic, write_text_atomic
from hsr_eval.interrupts import sigterm_unwinds
from hsr_eval.language_weights import language_sparsity_counts
from hsr_eval.launch import (
    ServeConfig,
    ServeError,
    check_model_dir,
    free_port,
    log_summary,
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
from hsr_eval.output_rules import check_apart_from_inputs, foreign_entries
from hsr_eval.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from hsr_eval.tables import comparison_table
from hsr_eval.tasks import TASKS_DIR
from hsr_eval.tasks.judge_adapters import describe_judges

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


@dataclass(frozen=True)
class Parallelism:
    """How many devices one model's evaluation spreads over, for the two vLLM backends: `tensor`
    splits each layer across devices (a model too large for one), `data` runs that many engine
    replicas that share the prompts (lm-eval's offline `vllm` backend needs ray for it)."""

    tensor: int = 1
    data: int = 1

    def single(self) -> bool:
        return self.tensor == 1 and self.data == 1

    def model_args(self) -> str:
        """The suffix of lm-eval's `--model_args` for its offline `vllm` backend."""
        return f",tensor_parallel_size={self.tensor},data_parallel_size={self.data}"


def parse_models(items: list[str]) -> list[ModelSpec]:
    specs = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"error: --models takes LABEL=DIR pairs, got {item!r}")
        if not LABEL_PATTERN.fullmatch(label):
            raise SystemExit(
                f"error: --models label {label!r}: use letters, digits and . _ + - (it names the "
                "model's folder under --out)"
            )
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
        # every verdict, with the guard's hazard categories, one JSON line each (judge_adapters.py)
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
        raise RuntimeError(f"lm-eval failed with code {code}:\n{log_summary(log_path)}")
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
    model_out: Path,
    limit: int | None,
    port: int | None,
    device: str,
    metadata: str | None = None,
    gen_kwargs: str | None = None,
    num_concurrent: int = 8,
    request_timeout: float = 600.0,
    parallel: Parallelism = Parallelism(),
) -> dict:
    """Serve (or load) one model and score it on `tasks`; everything it writes goes into
    `model_out`, the model's own folder of the comparison."""
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
            tensor_parallel_size=parallel.tensor,
            data_parallel_size=parallel.data,
        )
        with start_server(config) as server:
            args = (
                f"model={spec.label},base_url={server.url}/v1/chat/completions,num_concurrent={num_concurrent},"
                f"max_retries=3,timeout={request_timeout:g},{tokenizer_args}"
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
            f"kv_cache_memory_bytes={256 * 1024 * 1024}{parallel.model_args()}"
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


# ----------------------------------------------------------------------------- the output folder
MARKER = "hsr_compare_run.json"  # marks a folder hsr-compare wrote, with the run's settings
RESULT = "result.json"  # in a model's folder: it finished
PARTIAL = ".partial"  # a model's folder while it is evaluated; renamed when it finishes


class ModelFailed(RuntimeError):
    """One model's server or lm-eval run failed; its logs stay in `folder`."""

    def __init__(self, label: str, folder: Path, cause: Exception):
        super().__init__(f"{label}: {cause}")
        self.label, self.folder, self.cause = label, folder, cause


def run_settings(
    backend: str,
    tasks: str,
    limit: int | None,
    metadata: str | None,
    gen_kwargs: str | None,
    parallel: Parallelism = Parallelism(),
) -> dict:
    """What makes two evaluations of the same weights comparable (and a finished one reusable).
    Parallel sizes other than 1 are recorded: a tensor-parallel engine sums in another order, so
    its greedy answers may differ from a single device's."""
    settings = {
        "backend": backend,
        "tasks": tasks,
        "limit": limit,
        "metadata": json.loads(metadata) if metadata else None,
        "gen_kwargs": gen_kwargs,
        "judge": describe_judges(),
    }
    if not parallel.single():
        settings["parallel"] = {"tensor": parallel.tensor, "data": parallel.data}
    return settings


def weights_fingerprint(path: str) -> list:
    """Name, size and modification time of each weight file: a changed model is evaluated again."""
    folder = Path(path)
    return [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(folder.glob("*.safetensors"))
    ]


def _own_entries(labels: set[str]) -> set[str]:
    return {MARKER, "comparison.json", "comparison.md"} | labels | {lab + PARTIAL for lab in labels}


def inputs_of(models: list[ModelSpec], metadata: dict | None = None) -> list[tuple[str, str]]:
    """The local folders and files a comparison reads: each model, and every path --metadata
    names (the tasks' data)."""
    found = [(f"--models {s.label}", s.path) for s in models]
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            found.append((f"--metadata {key}", value))
    return [(label, path) for label, path in found if Path(path).expanduser().exists()]


def prepare_output(
    out: Path, inputs: list[tuple[str, str]], labels: set[str], overwrite: bool, resume: bool
) -> set[str]:
    """Check `--out` before any work: never an input, inside one or holding one; a folder with
    files hsr-compare did not write is refused; an earlier comparison needs --resume (keep its
    finished models) or --overwrite (start again). Returns the labels of the earlier run."""
    check_apart_from_inputs(out, inputs, option="--out")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} exists and is not a folder")
    entries = foreign_entries(out, ())
    if not entries:
        return set()
    if not (out / MARKER).is_file():
        raise SystemExit(
            f"error: --out {out} holds files hsr-compare did not write ({', '.join(entries[:3])}"
            f"{', ...' if len(entries) > 3 else ''}): choose a new or empty folder"
        )
    try:
        earlier = set(json.loads((out / MARKER).read_text())["models"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SystemExit(f"error: --out {out}: {MARKER} is not hsr-compare's ({err})") from None
    foreign = foreign_entries(out, _own_entries(earlier | labels))
    if foreign:
        raise SystemExit(
            f"error: --out {out} holds files hsr-compare did not write ({', '.join(foreign[:3])}): "
            "choose a new folder"
        )
    if not (overwrite or resume):
        raise SystemExit(
            f"error: --out {out} holds an earlier comparison: pass --resume to keep the models it "
            "finished, or --overwrite to replace it"
        )
    return earlier


def _clear(out: Path, labels: set[str]) -> None:
    for name in _own_entries(labels):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def finished_result(folder: Path, spec: ModelSpec, settings: dict) -> dict | None:
    """A model's earlier result, when it scored the same weights with the same settings."""
    try:
        saved = json.loads((folder / RESULT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (
        saved.get("settings") == settings
        and saved.get("resolved_path") == str(Path(spec.path).expanduser().resolve())
        and saved.get("weights") == weights_fingerprint(spec.path)
    )
    if not same:
        return None
    result = saved["result"]
    result["lm_eval_results"] = str(folder / result["lm_eval_results"])
    return result


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
    overwrite: bool = False,
    resume: bool = False,
    request_timeout: float = 600.0,
    parallel: Parallelism = Parallelism(),
) -> dict:
    """Evaluate every model into OUT/<label>/ (written as OUT/<label>.partial/ and renamed when
    the model finishes), then write OUT/comparison.json and .md atomically. A failure stops the
    run with ModelFailed; the models finished before it stay, for --resume."""
    out = Path(out).expanduser().resolve()
    labels = {s.label for s in models}
    inputs = inputs_of(models, json.loads(metadata) if metadata else None)
    earlier = prepare_output(out, inputs, labels, overwrite, resume)
    settings = run_settings(backend, tasks, limit, metadata, gen_kwargs, parallel)
    if overwrite:
        _clear(out, earlier | labels)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / MARKER,
        {
            "written_by": "hsr-compare",
            "models": sorted(earlier | labels),
            "settings": settings,
        },
    )
    results = {}
    for index, spec in enumerate(models, start=1):
        final, partial = out / spec.label, out / (spec.label + PARTIAL)
        reused = finished_result(final, spec, settings) if resume else None
        if reused is not None:
            print(
                f"[eval] ({index}/{len(models)}) {spec.label}: finished earlier; kept", flush=True
            )
            results[spec.label] = reused
            continue
        print(f"[eval] ({index}/{len(models)}) {spec.label}: {spec.path} via {backend}", flush=True)
        started = time.monotonic()
        if partial.exists():
            shutil.rmtree(partial)
        try:
            result = evaluate_model(
                spec,
                backend,
                tasks,
                partial,
                limit,
                port,
                device,
                metadata,
                gen_kwargs,
                num_concurrent,
                request_timeout,
                parallel,
            )
        except (ServeError, RuntimeError) as err:
            raise ModelFailed(spec.label, partial, err) from err
        result["lm_eval_results"] = str(Path(result["lm_eval_results"]).relative_to(partial))
        write_json_atomic(
            partial / RESULT,
            {
                "settings": settings,
                "resolved_path": str(Path(spec.path).expanduser().resolve()),
                "weights": weights_fingerprint(spec.path),
                "result": result,
            },
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        result["lm_eval_results"] = str(final / result["lm_eval_results"])
        results[spec.label] = result
        print(
            f"[eval] {spec.label}: ASR {result.get('asr')} utility {result.get('utility')} "
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


def preflight(args: argparse.Namespace, models: list[ModelSpec]) -> None:
    """Every input checked before the first server starts; SystemExit with one line on the first
    bad one (main turns it into exit code 2)."""
    metadata = parse_metadata(args.metadata)
    check_parallelism(args.backend, args.tensor_parallel_size, args.data_parallel_size)
    for spec in models:
        check_model_folder(spec.label, spec.path)
        if args.backend == "vllm-serve" and Path(spec.path).expanduser().is_dir():
            try:
                check_model_dir(str(Path(spec.path).expanduser()))
            except ServeError as err:
                raise SystemExit(f"error: --models {spec.label}: {err}") from None
    out = Path(args.out).expanduser().resolve()
    labels = {s.label for s in models}
    prepare_output(out, inputs_of(models, metadata), labels, args.overwrite, args.resume)
    ours = read_task_files()
    leaves = leaf_tasks(args.tasks.split(","), ours)
    check_backend(args.backend, leaves, ours)
    check_task_data(leaves, ours, metadata)
    check_judges()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="LABEL=DIR")
    parser.add_argument(
        "--out",
        required=True,
        help="a new or empty folder, or one an earlier hsr-compare wrote (with --resume or "
        "--overwrite); never a model folder or a folder inside one",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="vllm-serve")
    parser.add_argument("--tasks", default="hsr_safety")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--device", default="cpu", help="device for the hf backends")
    parser.add_argument(
        "--metadata",
        help='JSON passed to the tasks, e.g. \'{"data_dir": "integration/hsr_eval/data/vl"}\'',
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
    parser.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="devices each model's layers are split across (vllm-serve and vllm backends; "
        "a model too large for one device)",
    )
    parser.add_argument(
        "--data-parallel-size",
        "-dp",
        type=int,
        default=1,
        help="engine replicas that share the prompts (vllm-serve and vllm backends; each "
        "replica takes --tensor-parallel-size devices; the vllm backend needs ray for it)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds one request to vllm serve may take (default 600): all --num-concurrent "
        "requests share the engine, and on a slow CPU a shorter limit times every one of them "
        "out, so that lm-eval retries them forever",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="in an --out an earlier hsr-compare wrote: keep the models it finished with the "
        "same weights and settings, evaluate the rest",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="in an --out an earlier hsr-compare wrote: delete its results and start again",
    )
    args = parser.parse_args(argv)
    if args.num_concurrent < 1:
        parser.error("--num-concurrent must be at least 1")
    if args.request_timeout <= 0:
        parser.error("--request-timeout must be positive")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
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
        models = parse_models(args.models)
        preflight(args, models)
    except SystemExit as stop:
        print(stop.code if isinstance(stop.code, str) else f"error: {stop.code}", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser().resolve()
    message = "error: hsr-compare stopped by signal {signum}: its servers are stopped"
    try:
        with sigterm_unwinds(message):
            run_evaluation(
                models,
                out,
                args.backend,
                args.tasks,
                args.limit,
                args.port,
                args.device,
                args.metadata,
                args.gen_kwargs,
                args.num_concurrent,
                args.overwrite,
                args.resume,
                args.request_timeout,
                Parallelism(args.tensor_parallel_size, args.data_parallel_size),
            )
    except ModelFailed as failed:
        print(f"error: model {failed.label} failed: {failed.cause}", file=sys.stderr)
        print(
            f"error: its logs are in {failed.folder}; the models finished before it are kept in "
            f"{out}: run again with --resume to skip them",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            f"error: hsr-compare interrupted: its servers are stopped; finished models are kept "
            f"in {out} (--resume skips them)",
            file=sys.stderr,
        )
        return 130
    except SystemExit as stop:
        if isinstance(stop.code, str):  # SIGTERM
            print(f"{stop.code}; finished models are kept in {out} (--resume)", file=sys.stderr)
            return 143
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
