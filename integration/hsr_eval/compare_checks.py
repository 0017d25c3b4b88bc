"""What `hsr-compare` checks before the first server starts: every input, one line each.

A wrong `--metadata`, a task name that does not exist, a data file the tasks cannot read, a judge
that is misconfigured or does not answer, a model folder without its tokenizer or with a
truncated weight file, and a backend that cannot run the chosen tasks are each refused here, in
seconds, as `error: ...` with exit code 2, instead of as a traceback from inside lm-eval or vLLM
a minute or more into the run. Where a check needs to read data, it reads it the way the run
will: the tasks' own loaders with the run's metadata, the judges' own settings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hsr_eval.tasks import TASKS_DIR

__all__ = [
    "LABEL_PATTERN",
    "TaskFile",
    "check_backend",
    "check_judges",
    "check_model_folder",
    "check_parallelism",
    "check_task_data",
    "leaf_tasks",
    "parse_metadata",
    "read_task_files",
]

# a label names the model's folder under --out and its row in the comparison
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# the environment lm-eval runs under in hsr-compare (compare.run_lm_eval): data comes offline
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


def parse_metadata(text: str | None) -> dict:
    """`--metadata` as lm-eval will read it: a JSON object (or nothing)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise fail(f"--metadata is not JSON ({err.msg} at column {err.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise fail(f"--metadata must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


# ----------------------------------------------------------------------------- tasks
def _task_yaml_loader():
    """A yaml loader for lm-eval's task files: `!function module.name` is kept as its text."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        return {"!function": loader.construct_scalar(node)}

    Loader.add_constructor("!function", function)
    return Loader


@dataclass(frozen=True)
class TaskFile:
    """One task or group of the installed hsr_safety folder, with its includes merged in."""

    name: str
    config: dict

    @property
    def is_group(self) -> bool:
        return "group" in self.config and "task" in self.config

    @property
    def loader(self) -> str | None:
        dataset = self.config.get("custom_dataset")
        return dataset.get("!function") if isinstance(dataset, dict) else None

    @property
    def has_pictures(self) -> bool:
        return "doc_to_image" in self.config


def read_task_files(folder: Path = TASKS_DIR) -> dict[str, TaskFile]:
    """Every task and group the installed folder defines, by name."""
    import yaml

    loader = _task_yaml_loader()

    def read(path: Path) -> dict:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        include = config.pop("include", None)
        if include:
            config = {**read(path.parent / include), **config}
        return config

    found = {}
    for path in sorted(folder.glob("*.yaml")):
        config = read(path)
        name = config.get("group") if "task" in config and "group" in config else config.get("task")
        if isinstance(name, str):
            found[name] = TaskFile(name, config)
    return found


def _lm_eval_task_names() -> set[str]:
    """Every task, group and tag lm-eval knows, with this folder included (a few seconds)."""
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_path=str(TASKS_DIR)).all_tasks)


def leaf_tasks(
    names: Iterable[str], ours: dict[str, TaskFile], known: set[str] | None = None
) -> list[str]:
    """The tasks a run of `names` generates for, groups expanded; lm-eval's own tasks are
    looked up only when a name is not one of ours. SystemExit names every unknown one."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise fail("--tasks is empty: name a task or group, e.g. hsr_safety")
    leaves: list[str] = []
    unknown = []

    def expand(name: str) -> None:
        task = ours.get(name)
        if task is None:
            nonlocal known
            if known is None:
                known = _lm_eval_task_names()
            if name not in known:
                unknown.append(name)
            elif name not in leaves:
                leaves.append(name)  # lm-eval's own task: its data is lm-eval's business
            return
        if task.is_group:
            for member in task.config["task"]:
                expand(member if isinstance(member, str) else member.get("task", ""))
        elif name not in leaves:
            leaves.append(name)

    for name in names:
        expand(name)
    if unknown:
        ours_list = ", ".join(sorted(ours))
        raise fail(
            f"unknown task(s) {', '.join(unknown)}: neither installed with hsr-eval "
            f"({ours_list}) nor known to lm-eval"
        )
    return leaves


def check_task_data(leaves: list[str], ours: dict[str, TaskFile], metadata: dict) -> None:
    """Run each of our tasks' loaders with the run's metadata, as lm-eval will: a missing data
    folder, an unreadable file or a file without the rows a task needs is one line here."""
    from hsr_eval.tasks import utils

    saved = {key: os.environ.get(key) for key in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        for name in leaves:
            task = ours.get(name)
            if task is None or task.loader is None:
                continue
            function = getattr(utils, task.loader.rsplit(".", 1)[-1])
            kwargs = {**(task.config.get("metadata") or {}), **metadata}
            try:
                function(**kwargs)
            except (OSError, ValueError, KeyError) as err:
                reason = str(err).strip() or type(err).__name__
                raise fail(f"task {name} cannot read its data: {reason}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_backend(backend: str, leaves: list[str], ours: dict[str, TaskFile]) -> None:
    pictures = [name for name in leaves if name in ours and ours[name].has_pictures]
    if backend == "hf-multimodal" and not pictures:
        raise fail(
            f"--backend hf-multimodal runs picture tasks, and {', '.join(leaves)} has none: use "
            "--backend vllm-serve or hf for text tasks (or --tasks hsr_safety_vl)"
        )


def check_parallelism(backend: str, tensor: int, data: int) -> None:
    """Parallel sizes the backend can honour: at least 1, only on the vLLM backends, and data
    parallelism in lm-eval's offline `vllm` backend only where ray is installed (it starts the
    replicas with ray, and says so only after loading the tasks)."""
    for flag, size in (("--tensor-parallel-size", tensor), ("--data-parallel-size", data)):
        if size < 1:
            raise fail(f"{flag} must be at least 1, not {size}")
        if size > 1 and backend not in ("vllm-serve", "vllm"):
            raise fail(f"{flag} {size} needs --backend vllm-serve or vllm, not {backend}")
    if backend == "vllm" and data > 1 and importlib.util.find_spec("ray") is None:
        raise fail(
            f"--data-parallel-size {data} with --backend vllm needs ray (pip install ray in this "
            "virtualenv), or use --backend vllm-serve, whose server runs the replicas itself"
        )


# ----------------------------------------------------------------------------- judges
def check_judges(ping: bool = True) -> str:
    """The judges HSR_JUDGE and its settings select; each server they need answers and serves
    the model named (one GET of its model list, no judging request)."""
    from hsr_eval.tasks.judge_adapters import JudgeSet
    from hsr_eval.tasks.judge_client import JudgeError

    try:
        judges = JudgeSet.from_env()
    except ValueError as err:
        raise fail(f"judge settings: {err}") from None
    if ping:
        endpoints = {}
        for judge in (judges.harm, judges.refusal, judges.overrefusal):
            endpoint = getattr(judge, "endpoint", None)
            if endpoint is not None:
                endpoints[(endpoint.url, endpoint.model)] = endpoint
        for endpoint in endpoints.values():
            try:
                endpoint.check()
            except JudgeError as err:
                raise fail(f"judge server: {err}") from None
    return judges.describe()


# ----------------------------------------------------------------------------- model folders
def _safetensors_problem(file: Path) -> str | None:
    """Why `file` is not a complete safetensors file, or None: the header must parse and its
    tensors must end exactly where the file does (a truncated copy fails here)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{file.name} is {size} bytes, too short for a safetensors header"
        length = int.from_bytes(head, "little")
        if length > size - 8 or length > 100 * 1024 * 1024:
            return f"{file.name}: its header claims {length} bytes; the file has {size}"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{file.name}: its header is not JSON (not a safetensors file?)"
    if not isinstance(header, dict):
        return f"{file.name}: its header is not a JSON object"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"{file.name} is {size:,} bytes, its header says {expected:,} (truncated copy?)"
    return None


def check_model_folder(label: str, path: str) -> None:
    """A local model folder: a config, a tokenizer or processor, complete safetensors weights
    (and every shard its index names). A hub id is left to the server (networked users)."""
    from hsr_eval.launch import looks_like_hub_id, model_folder_problem

    folder = Path(path).expanduser()
    where = f"--models {label}={path}"
    if not folder.exists() and looks_like_hub_id(path):
        return
    problem = model_folder_problem(folder)
    if problem:
        raise fail(f"{where} {problem}")
    config = folder / "config.json"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(f"{where}: config.json is not JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise fail(f"{where}: config.json is not a JSON object")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES + PROCESSOR_FILES):
        raise fail(
            f"{where} has no tokenizer or processor files ({', '.join(TOKENIZER_FILES)}): "
            "save the tokenizer beside the model"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise fail(f"{where} has no *.safetensors weights")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise fail(f"{where}: {index.name} is not a safetensors index ({err})") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise fail(f"{where}: {index.name} names missing shard(s) {', '.join(missing)}")
    for file in weights:
        problem = _safetensors_problem(file)
        if problem:
            raise fail(f"{where}: {problem}")
