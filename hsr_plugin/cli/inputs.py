"""What `hsr compress` and `hsr sweep` check before any work, and what they hand `oneshot`.

The user's files are never written into, over or above; a model path, a dataset file and
every local calibration file is read once here, so a bad one is one line before any loading.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "RESOLVED_RECIPE",
    "check_dataset",
    "check_hsr_entries",
    "check_model",
    "check_output",
    "check_run",
    "dataset_kwargs",
    "input_paths",
    "looks_local",
    "stop_cleanly_on_sigterm",
]

RESOLVED_RECIPE = "hsr_recipe_resolved.yaml"  # marks a folder that `hsr compress` wrote


def looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative, or not one slash."""
    return name.startswith(("/", ".", "~")) or name.count("/") != 1


def check_model(model: str) -> None:
    """A local model folder holds a config and readable safetensors; a hub id is left to oneshot."""
    from hsr_plugin.dense_source import safetensors_keys

    path = Path(model).expanduser()
    if not path.exists():
        if looks_local(model):
            raise SystemExit(f"error: model path {model} not found")
        return  # a hub id: oneshot downloads it (networked users)
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: {path} is a local path but holds no config.json")
    for file in sorted(path.glob("*.safetensors")):
        try:
            safetensors_keys(file)
        except ValueError as err:
            raise SystemExit(f"error: --model {err}") from None


def check_dataset(spec: str) -> None:
    """A local `--dataset` is one plugin-format .jsonl file; anything else is a dataset name."""
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


def check_hsr_entries(recipe: dict) -> None:
    """Validate every HSRModifier entry (fields, and its local calibration files) up front."""
    from hsr_plugin import HSRModifier
    from hsr_plugin.conversations import BUNDLED_SETS, load_conversations
    from hsr_plugin.recipe_overrides import recipe_modifiers

    for name, fields in recipe_modifiers(recipe):
        if name != "HSRModifier":
            continue
        modifier = HSRModifier(**fields)  # a pydantic error names the bad field
        for spec in (modifier.safety_data, modifier.utility_data):
            if spec in BUNDLED_SETS or Path(spec).exists() or Path(spec.rsplit(":", 1)[0]).exists():
                load_conversations(spec)  # a hub id is left to the run (it needs the network)


def input_paths(args: argparse.Namespace, recipe: dict) -> list[tuple[str, Path]]:
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


def check_output(output: Path, overwrite: bool, inputs: list[tuple[str, Path]]) -> None:
    """Refuse, before any work, an output that would write into, over or above an input."""
    from hsr_eval.output_rules import check_apart_from_inputs

    check_apart_from_inputs(output, inputs)
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


def check_run(
    args: argparse.Namespace, other_inputs: list[tuple[str, Path]] | None = None
) -> tuple[Path, dict]:
    """Every check of a run that prunes with a recipe, before any work: the model and dataset
    paths, the recipe with its `--set` overrides, an output that touches no input (`args`' and
    `other_inputs`), and every HSRModifier entry. Returns the output folder and the recipe."""
    from hsr_plugin.recipe_overrides import apply_overrides, load_recipe_dict, resolve_recipe

    args.recipe = str(resolve_recipe(args.recipe))
    output = Path(args.output).resolve()
    check_model(args.model)
    check_dataset(args.dataset)
    recipe = apply_overrides(load_recipe_dict(args.recipe), args.overrides)
    check_output(output, args.overwrite, input_paths(args, recipe) + (other_inputs or []))
    check_hsr_entries(recipe)
    return output, recipe


def dataset_kwargs(args: argparse.Namespace) -> dict:
    """oneshot's calibration arguments: a plugin .jsonl is tokenized here (seeded rows), a
    dataset name goes to oneshot as it is."""
    spec = args.dataset
    if spec.endswith(".jsonl"):
        from hsr_plugin.calibration import load_processor
        from hsr_plugin.oneshot_data import calibration_kwargs

        processor = load_processor(args.model)
        return calibration_kwargs(spec, processor, args.num_samples, args.max_seq_length, args.seed)
    return {"dataset": spec}


def stop_cleanly_on_sigterm(command: str):
    """SIGTERM unwinds like Ctrl-C, so the staging folder is removed and nothing is published."""
    from hsr_eval.interrupts import sigterm_unwinds

    return sigterm_unwinds(
        f"error: hsr {command} stopped by signal {{signum}}; nothing was written"
    )
