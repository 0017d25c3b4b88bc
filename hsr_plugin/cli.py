"""The `hsr` command line: compress with a recipe, summarise a report, run the demo.

hsr compress --model MODEL --recipe recipes/wanda_hsr.yaml --output OUT [--dataset DATA]
hsr sweep --model MODEL --recipe RECIPE --dataset DATA --eval-data DIR --output OUT
          --grid num_heads=4,8 --grid neuron_score=wanda,restore_gain ...
hsr report OUT/hsr_report.json [--comparison EVAL/comparison.json] [--out DIR]
hsr demo [--out outputs/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

__all__ = ["main", "build_parser"]

REPORT_NAME = "hsr_report.json"
PIPELINES = ("independent", "sequential", "basic", "datafree")  # llm-compressor 0.14's


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsr", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    comp = sub.add_parser(
        "compress", help="run llm-compressor's oneshot with a recipe (HSR registered)"
    )
    comp.add_argument("--model", required=True, help="model id or local directory (never modified)")
    comp.add_argument(
        "--recipe",
        required=True,
        help="llm-compressor YAML recipe: a path, or a bundled recipe by name (e.g. wanda_hsr)",
    )
    comp.add_argument("--output", required=True, help="output directory (written atomically)")
    comp.add_argument(
        "--dataset",
        required=True,
        help="the pruning stage's calibration data: a conversational JSONL in the plugin's "
        "format, or a dataset name/id that oneshot understands (e.g. open_platypus)",
    )
    comp.add_argument(
        "--num-samples", type=int, default=128, help="calibration samples (default 128)"
    )
    comp.add_argument("--max-seq-length", type=int, default=512, help="default 512")
    comp.add_argument("--seed", type=int, default=0, help="seed for sampling calibration rows")
    comp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="MODIFIER.FIELD=VALUE",
        help="override a recipe field, e.g. --set HSRModifier.num_heads=4 (repeatable)",
    )
    comp.add_argument(
        "--pipeline",
        default="independent",
        choices=PIPELINES,
        help="oneshot pipeline (default independent)",
    )
    comp.add_argument(
        "--sequential-targets", nargs="*", default=None, help="decoder layer class names"
    )
    comp.add_argument(
        "--overwrite", action="store_true", help="replace an existing output directory"
    )

    sweep = sub.add_parser(
        "sweep",
        help="prune once, run HSR for every point of a grid, score each with the hsr_safety "
        "tasks' scorer: a table and a Pareto plot",
    )
    sweep.add_argument("--model", required=True, help="model id or local directory")
    sweep.add_argument(
        "--recipe",
        required=True,
        help="recipe (a path or a bundled name): pruning stage(s), then an HSRModifier stage",
    )
    sweep.add_argument("--output", required=True, help="output directory (written atomically)")
    sweep.add_argument("--dataset", required=True, help="the pruning stage's calibration data")
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="FIELD=V1,V2",
        help="an HSRModifier field and its values (repeatable; the grid is their product)",
    )
    sweep.add_argument(
        "--eval-data",
        required=True,
        help="folder of held-out sets in the hsr_safety tasks' format (heldout_harmful.jsonl, "
        "heldout_borderline.jsonl, heldout_utility.jsonl; *_vision.jsonl for VLMs)",
    )
    sweep.add_argument("--eval-limit", type=int, help="score the first N documents per task")
    sweep.add_argument("--num-samples", type=int, default=128, help="calibration samples")
    sweep.add_argument("--max-seq-length", type=int, default=512, help="default 512")
    sweep.add_argument("--seed", type=int, default=0, help="seed for sampling calibration rows")
    sweep.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="MODIFIER.FIELD=VALUE"
    )
    sweep.add_argument("--overwrite", action="store_true", help="replace an earlier hsr output")

    rep = sub.add_parser("report", help="summarise an HSR report and draw its plots")
    rep.add_argument("report", help="hsr_report.json written by HSRModifier")
    rep.add_argument(
        "--comparison",
        help="comparison.json written by hsr-compare (integration/serving/compare.py)",
    )
    rep.add_argument("--out", help="folder for PNGs and summary.md (default: next to the report)")

    demo = sub.add_parser(
        "demo",
        help="end-to-end demo on the embedded organism (needs a repo checkout); other options "
        "(--method, --organism, --num-heads, --limit, --update-readme) go to "
        "integration/demo/run_demo.py",
    )
    demo.add_argument("--out", default="outputs/demo")
    return parser


RESOLVED_RECIPE = "hsr_recipe_resolved.yaml"  # marks a folder that `hsr compress` wrote


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative, or not one slash."""
    return name.startswith(("/", ".", "~")) or name.count("/") != 1


def _check_model(model: str) -> None:
    from hsr_plugin.dense_source import safetensors_keys

    path = Path(model).expanduser()
    if not path.exists():
        if _looks_local(model):
            raise SystemExit(f"error: model path {model} not found")
        return  # a hub id: oneshot downloads it (networked users)
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: {path} is a local path but holds no config.json")
    for file in sorted(path.glob("*.safetensors")):
        try:
            safetensors_keys(file)
        except ValueError as err:
            raise SystemExit(f"error: --model {err}") from None


def _check_dataset(spec: str) -> None:
    path = Path(spec)
    if not path.exists():
        return  # a dataset name oneshot knows
    if path.is_dir():
        raise SystemExit(
            f"error: --dataset {spec} is a folder: pass one plugin-format .jsonl file, or a "
            "dataset name oneshot knows (e.g. open_platypus)"
        )
    if path.suffix != ".jsonl":
        raise SystemExit(
            f"error: --dataset {spec}: a local file must be a plugin-format .jsonl (one "
            '{"messages": [...]} conversation a line); other formats go through a dataset name'
        )


@contextmanager
def _stop_cleanly_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the staging folder is removed and nothing is published."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise SystemExit(f"error: hsr compress stopped by signal {signum}; nothing was written")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_hsr_entries(recipe: dict) -> None:
    """Validate every HSRModifier entry (fields, and its local calibration files) up front."""
    from hsr_plugin import HSRModifier
    from hsr_plugin.calibration import BUNDLED_SETS, load_conversations
    from hsr_plugin.recipe_overrides import recipe_modifiers

    for name, fields in recipe_modifiers(recipe):
        if name != "HSRModifier":
            continue
        modifier = HSRModifier(**fields)  # a pydantic error names the bad field
        for spec in (modifier.safety_data, modifier.utility_data):
            if spec in BUNDLED_SETS or Path(spec).exists() or Path(spec.rsplit(":", 1)[0]).exists():
                load_conversations(spec)  # a hub id is left to the run (it needs the network)


def _input_paths(args: argparse.Namespace, recipe: dict) -> list[tuple[str, Path]]:
    """Every local file or folder the run reads: the model, the recipe, the data files."""
    from hsr_plugin.recipe_overrides import recipe_modifiers

    named = [("--model", args.model), ("--recipe", args.recipe)]
    if args.dataset:
        named.append(("--dataset", args.dataset))
    for name, fields in recipe_modifiers(recipe):
        for field in ("safety_data", "utility_data", "dense_model", "processor"):
            if isinstance(fields.get(field), str):
                named.append((f"{name}.{field}", fields[field]))
    found = []
    for label, value in named:
        # "file.json:split" names a file too
        for candidate in (value, value.rsplit(":", 1)[0]):
            if Path(candidate).exists():
                found.append((label, Path(candidate).resolve()))
                break
    return found


def _check_output(output: Path, overwrite: bool, inputs: list[tuple[str, Path]]) -> None:
    """Refuse, before any work, an output that would write into, over or above an input."""
    for label, path in inputs:
        if output == path:
            raise SystemExit(f"error: --output {output} is the input {label}: choose a new folder")
        if output in path.parents:
            raise SystemExit(
                f"error: --output {output} contains the input {label} ({path}): replacing it "
                "would delete that input; choose a new folder"
            )
        if path in output.parents:
            raise SystemExit(
                f"error: --output {output} lies inside the input {label} ({path}): the input is "
                "never written into; choose a folder outside it"
            )
    if output.exists() and not output.is_dir():
        raise SystemExit(f"error: --output {output} exists and is not a folder")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise SystemExit(f"error: output {output} exists and is not empty (pass --overwrite)")
        if not (output / RESOLVED_RECIPE).is_file():
            raise SystemExit(
                f"error: --overwrite replaces only a folder that `hsr compress` wrote "
                f"(it has {RESOLVED_RECIPE}); {output} is not one: choose a new folder"
            )


def compress(args: argparse.Namespace) -> Path:
    """Run oneshot into a temporary sibling folder, then move it into place."""
    import yaml

    from hsr_eval.common import published_dir, write_json_atomic
    from hsr_plugin.recipe_overrides import apply_overrides, load_recipe_dict, resolve_recipe

    args.recipe = str(resolve_recipe(args.recipe))
    output = Path(args.output).resolve()
    _check_model(args.model)
    _check_dataset(args.dataset)

    recipe = apply_overrides(load_recipe_dict(args.recipe), args.overrides)
    _check_output(output, args.overwrite, _input_paths(args, recipe))
    _check_hsr_entries(recipe)

    import torch
    from llmcompressor import oneshot

    from hsr_plugin.models import load_model

    torch.manual_seed(args.seed)  # oneshot's calibration sampler shuffles with torch's generator
    logger.info(f"hsr compress: {args.model} with {args.recipe} -> {output}")
    # loaded here with its family's auto class: oneshot would load any path as a causal LM
    model = load_model(args.model)
    with _stop_cleanly_on_sigterm(), published_dir(output) as staging:
        # checked again under the output's lock: a run that finished meanwhile is not replaced
        _check_output(output, args.overwrite, [])
        oneshot_kwargs = dict(
            model=model,
            processor=args.model,
            recipe=yaml.safe_dump(recipe, sort_keys=False),
            output_dir=str(staging),
            num_calibration_samples=args.num_samples,
            max_seq_length=args.max_seq_length,
            pipeline=args.pipeline,
        )
        if args.sequential_targets:
            oneshot_kwargs["sequential_targets"] = args.sequential_targets
        oneshot_kwargs.update(_dataset_kwargs(args))
        oneshot(**oneshot_kwargs)
        # The report is taken from the modifier, so no temporary path enters a saved recipe:
        # hsr_recipe_resolved.yaml (and llm-compressor's recipe.yaml) reproduce the run as given.
        reports = _hsr_reports()
        if reports:
            write_json_atomic(staging / REPORT_NAME, reports[-1])
        (staging / RESOLVED_RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False))
    report = output / REPORT_NAME
    logger.info(
        f"hsr compress: model saved to {output}" + (f", report {report}" if report.exists() else "")
    )
    return output


def sweep(args: argparse.Namespace) -> Path:
    """Validate everything, then prune once and score every grid point into a staging folder."""
    import yaml

    from hsr_eval.common import published_dir
    from hsr_plugin.recipe_overrides import apply_overrides, load_recipe_dict, resolve_recipe
    from hsr_plugin.sweep import parse_grid, points, run_sweep, split_recipe

    args.recipe = str(resolve_recipe(args.recipe))
    output = Path(args.output).resolve()
    _check_model(args.model)
    _check_dataset(args.dataset)
    eval_data = Path(args.eval_data)
    if not eval_data.is_dir():
        raise SystemExit(f"error: --eval-data {eval_data} is not a folder")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise SystemExit("error: --eval-limit must be >= 1")
    recipe = apply_overrides(load_recipe_dict(args.recipe), args.overrides)
    inputs = _input_paths(args, recipe) + [("--eval-data", eval_data.resolve())]
    _check_output(output, args.overwrite, inputs)
    _check_hsr_entries(recipe)
    grid = parse_grid(args.grid)
    _pruning, base, _after = split_recipe(recipe)
    logger.info(f"hsr sweep: {len(points(base, grid))} points over one pruning -> {output}")

    import torch

    torch.manual_seed(args.seed)
    with _stop_cleanly_on_sigterm(), published_dir(output) as staging:
        _check_output(output, args.overwrite, [])
        run_sweep(
            args.model,
            recipe,
            grid,
            {
                "num_calibration_samples": args.num_samples,
                "max_seq_length": args.max_seq_length,
                **_dataset_kwargs(args),
            },
            staging,
            eval_data.resolve(),
            args.eval_limit,
        )
        (staging / RESOLVED_RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False))
    logger.info(f"hsr sweep: table {output / 'sweep.md'}, plot {output / 'pareto.png'}")
    print((output / "sweep.md").read_text())
    return output


def _hsr_reports() -> list[dict]:
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    modifiers = getattr(active_session().lifecycle.recipe, "modifiers", None) or []
    return [m.report for m in modifiers if isinstance(m, HSRModifier) and m.report is not None]


def _dataset_kwargs(args: argparse.Namespace) -> dict:
    spec = args.dataset
    if spec.endswith(".jsonl"):
        from hsr_plugin.calibration import load_processor
        from hsr_plugin.oneshot_data import calibration_kwargs

        processor = load_processor(args.model)
        return calibration_kwargs(spec, processor, args.num_samples, args.max_seq_length, args.seed)
    return {"dataset": spec}


def report(args: argparse.Namespace) -> Path:
    from hsr_eval.common import write_text_atomic
    from hsr_plugin.plots import plot_head_scores, plot_safety_bars, summary_markdown

    report_path = Path(args.report)
    data = _read_report(report_path)
    comparison = _read_json(Path(args.comparison), "comparison") if args.comparison else None
    if comparison is not None and not isinstance(comparison.get("models"), dict):
        raise SystemExit(f"error: {args.comparison}: a comparison has a 'models' mapping")
    out = Path(args.out) if args.out else report_path.parent
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_head_scores(data, out / "head_scores.png")]
    if comparison is not None:
        written.append(plot_safety_bars(comparison, out / "safety_bars.png"))
    text = summary_markdown(data, comparison)
    write_text_atomic(out / "summary.md", text)
    written.append(out / "summary.md")
    print(text)
    for path in written:
        logger.info(f"wrote {path}")
    return out


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: {path}: not a valid JSON {what} ({err})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: a {what} is a JSON object, found {type(data).__name__}")
    return data


def _read_report(path: Path) -> dict:
    from hsr_plugin.report import SCHEMA_VERSION

    data = _read_json(path, "report")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SystemExit(
            f"error: {path}: schema_version {version!r} is not supported (this hsr reads "
            f"version {SCHEMA_VERSION})"
        )
    heads = data.get("heads")
    fields = (("layer", int), ("head", int), ("score", (int, float)))
    if not isinstance(heads, list) or not all(
        isinstance(h, dict) and all(isinstance(h.get(k), t) for k, t in fields) for h in heads
    ):
        raise SystemExit(f"error: {path}: 'heads' must list {{layer, head, score}} objects")
    for key in ("totals", "config"):
        if not isinstance(data.get(key), dict):
            raise SystemExit(f"error: {path}: '{key}' must be a JSON object")
    if not isinstance(data.get("restored"), list) or not isinstance(
        data.get("selected_heads"), list
    ):
        raise SystemExit(f"error: {path}: 'restored' and 'selected_heads' must be lists")
    return data


def demo(args: argparse.Namespace, passthrough: list[str]) -> int:
    root = _find_checkout()
    # The demo is a module of the checkout (`integration`), run from the checkout's root; its
    # output folder stays where the user named it.
    out = str(Path(args.out).resolve())
    cmd = [sys.executable, "-m", "integration.demo.run_demo", "--out", out, *passthrough]
    logger.info(f"(cd {root}) " + " ".join(cmd))
    os.chdir(root)
    os.execv(sys.executable, cmd)


def _find_checkout() -> Path:
    # The working directory and its parents only: an installed package is no checkout, and the
    # demo must never run (or write) inside site-packages.
    for base in [Path.cwd(), *Path.cwd().parents]:
        if (base / "integration" / "demo" / "run_demo.py").is_file():
            return base
    raise SystemExit(
        "error: `hsr demo` runs from a checkout of the hsr-plugin repository "
        "(integration/demo/run_demo.py was not found); clone it and run `make demo`"
    )


def main(argv: list[str] | None = None) -> int:
    # --debug is read by run(); accepted anywhere on the line
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "compress":
        compress(args)
    elif args.command == "sweep":
        sweep(args)
    elif args.command == "report":
        report(args)
    elif args.command == "demo":
        return demo(args, extra)
    return 0


def _one_line(err: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or e.get('type')}: {e['msg']}"
            for e in err.errors()
        )
        return f"{err.title}: {problems}"
    text = str(err).strip() or type(err).__name__
    return (
        text.splitlines()[0] if len(text.splitlines()) == 1 else " | ".join(text.splitlines()[:3])
    )


OOM_ADVICE = (
    "out of memory: lower HSRModifier.batch_size or attribution_memory_gb, or set "
    "offload_statistics: true (--set HSRModifier.batch_size=1); hsr --debug shows where"
)
BUG_LINE = (
    "hsr: this is a bug in hsr-plugin or a library below it, not a problem with your input; "
    "please report it with the traceback above"
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the user can fix: HSR's own errors, invalid modifier fields, an output another run
    is writing, and a judge that cannot be reached or is set up wrong (for `hsr sweep`)."""
    from pydantic import ValidationError

    from hsr_eval.common import OutputBusyError
    from hsr_eval.tasks.judges import JudgeError
    from hsr_plugin.errors import HSRUserError

    return (HSRUserError, ValidationError, OutputBusyError, JudgeError)


def run(argv: list[str] | None = None) -> int:
    """The `hsr` console script: a user error (`HSRUserError`, an invalid field) prints one line
    `error: ...` and exits with 2; out of memory prints one line of advice and exits with 3;
    anything else is a bug: its traceback, a line saying so, and exit code 1. `--debug` shows
    every traceback."""
    import traceback

    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return main(argv)
    except SystemExit as err:
        if debug or not isinstance(err.code, str):
            raise
        print(err.code if err.code.startswith("error:") else f"error: {err.code}", file=sys.stderr)
        return 2
    except _user_errors() as err:
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        if debug:
            raise
        print(f"error: {OOM_ADVICE}", file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc()
        print(BUG_LINE, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
