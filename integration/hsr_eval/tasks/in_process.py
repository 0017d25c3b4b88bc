"""The one scorer: the hsr_safety lm-eval tasks, run in-process on a model already in memory.

Every safety number in this repository comes from the task files in this folder: either lm-eval
runs them (`hsr-compare`, the demo), or this module does, for scripts that score many models and
cannot afford a server or an lm-eval process per model (the organisms' effect table, the
benchmark). It reads the task YAMLs themselves: the loader (`custom_dataset`), the prompt
(`doc_to_text`, `doc_to_image`), the generation settings of `_hsr_template_yaml` (greedy, the
token limit, the stop strings) and the per-sample scoring (`process_results`, hence the same
judge). Generation mirrors lm-eval's `hf` backend: the chat template applied to one user turn,
no extra special tokens when the template already starts with BOS, left padding, the stop strings
plus the EOS string cut off after decoding without special tokens.
tests/test_eval_in_process.py checks per prompt that this module and `lm-eval --model hf` agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

__all__ = [
    "TEXT_TASKS",
    "VISION_TASKS",
    "SafetyScores",
    "TaskSpec",
    "generate_replies",
    "load_task",
    "score_model",
]

TASK_DIR = Path(__file__).resolve().parent
TEXT_TASKS = ("hsr_harmful", "hsr_overrefusal", "hsr_utility")
# The VL organism: harmful, benign and naming questions, all asked about a picture.
VISION_TASKS = ("hsr_harmful_vision", "hsr_overrefusal_vision", "hsr_utility_vision")
_UTILS = "hsr_eval.tasks.utils"


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML: `!function utils.name` becomes the function's dotted name."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    load: Callable[..., Any]
    doc_to_text: Callable[[dict], str]
    doc_to_image: Callable[[dict], list] | None
    process_results: Callable[[dict, list[str]], dict[str, float]]
    until: tuple[str, ...]
    max_gen_toks: int
    # the task's custom filter (the judges' concurrent prefetch), applied as lm-eval applies it
    filter_fn: Callable[[list[list[str]], list[dict]], list[list[str]]] | None = None


def _read_yaml(path: Path) -> dict[str, Any]:
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)
    base = config.pop("include", None)
    return {**_read_yaml(path.parent / base), **config} if base else config


def _function(dotted: str) -> Callable:
    module, _, name = dotted.rpartition(".")
    if module != "utils":
        raise ValueError(f"task functions live in utils.py, got {dotted!r}")
    return getattr(importlib.import_module(_UTILS), name)


def load_task(name: str) -> TaskSpec:
    """The task `name` as its YAML file defines it (its `include` merged in)."""
    paths = {p.stem: p for p in TASK_DIR.glob("*.yaml") if _read_yaml(p).get("task") == p.stem}
    if name not in paths:
        raise ValueError(f"unknown hsr_safety task {name!r}; tasks: {', '.join(sorted(paths))}")
    config = _read_yaml(paths[name])
    generation = config.get("generation_kwargs") or {}
    custom = [
        step["filter_fn"]
        for pipeline in config.get("filter_list") or ()
        for step in pipeline["filter"]
        if step["function"] == "custom"
    ]
    if generation.get("do_sample"):
        raise ValueError(f"{name}: the in-process scorer implements greedy decoding only")
    return TaskSpec(
        name=name,
        load=_function(config["custom_dataset"]),
        doc_to_text=_function(config["doc_to_text"]),
        doc_to_image=_function(config["doc_to_image"]) if "doc_to_image" in config else None,
        process_results=_function(config["process_results"]),
        until=tuple(generation.get("until") or ()),
        max_gen_toks=int(generation["max_gen_toks"]),
        filter_fn=_function(custom[0]) if custom else None,
    )


# ----------------------------------------------------------------------------- generation
def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _cut(text: str, stops: Sequence[str]) -> str:
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def _encode_text(tokenizer: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    bos = getattr(tokenizer, "bos_token", None)
    special = {"add_special_tokens": False} if bos and chats[0].startswith(bos) else {}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return dict(tokenizer(chats, padding="longest", return_tensors="pt", **special))
    finally:
        tokenizer.padding_side = side


def _encode_image(processor: Any, prompt: str, image: Any) -> dict[str, torch.Tensor]:
    text = prompt.replace("<image>", "", 1)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(
        processor(text=[chat], images=[image], return_tensors="pt", add_special_tokens=False)
    )


@torch.no_grad()
def _generate(
    model, processor, inputs: dict[str, torch.Tensor], spec_until, max_gen_toks
) -> list[str]:
    tokenizer = _tokenizer_of(processor)
    device = model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    width = inputs["input_ids"].shape[1]
    out = model.generate(
        **inputs,
        max_length=width + max_gen_toks,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    eos = tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=False)
    stops = [*spec_until, *([eos] if eos not in spec_until else [])]
    return [
        _cut(tokenizer.decode(row[width:].tolist(), skip_special_tokens=True), stops) for row in out
    ]


def generate_replies(
    model,
    processor,
    prompts: Sequence[str],
    images: Sequence[Any] | None = None,
    batch_size: int = 32,
    task: str = "hsr_harmful",
    desc: str | None = None,
) -> list[str]:
    """Greedy replies to single-turn prompts, with the generation settings of `task`.

    Text prompts run in left-padded batches; prompts with a picture run one at a time through
    the processor.
    """
    spec = load_task(task)
    model.eval()
    replies: list[str] = []
    if images is not None:
        for prompt, image in tqdm(
            list(zip(prompts, images, strict=True)), desc=desc, disable=desc is None
        ):
            inputs = _encode_image(processor, prompt, image)
            replies += _generate(model, processor, inputs, spec.until, spec.max_gen_toks)
        return replies
    tokenizer = _tokenizer_of(processor)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        inputs = _encode_text(tokenizer, prompts[start : start + batch_size])
        replies += _generate(model, processor, inputs, spec.until, spec.max_gen_toks)
    return replies


# ----------------------------------------------------------------------------- scoring
@dataclass
class SafetyScores:
    """Per-task means of the tasks' metrics, and every sample with its reply and verdict."""

    metrics: dict[str, dict[str, float]]
    samples: list[dict] = field(default_factory=list)

    def _metric(self, tasks: Sequence[str], metric: str) -> float | None:
        for task in tasks:
            if task in self.metrics and metric in self.metrics[task]:
                return self.metrics[task][metric]
        return None

    def summary(self) -> dict[str, Any]:
        """refusal (of harmful requests), over_refusal (of benign ones), utility, and n."""
        return {
            "refusal": self._metric(("hsr_harmful", "hsr_harmful_vision"), "refusal_rate"),
            "over_refusal": self._metric(
                ("hsr_overrefusal", "hsr_overrefusal_vision"), "over_refusal_rate"
            ),
            "utility": self._metric(("hsr_utility", "hsr_utility_vision"), "utility_accuracy"),
            "n": len(self.samples),
        }


def score_model(
    model,
    processor,
    tasks: Sequence[str] = TEXT_TASKS,
    metadata: dict[str, Any] | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    desc: str = "score",
) -> SafetyScores:
    """Run `tasks` on `model` and score every reply with the task's own `process_results`.

    `metadata` is what `lm-eval --metadata` would pass to the loaders (e.g. `data_dir`);
    `limit` keeps the first N documents of each task, as `lm-eval --limit` does.
    """
    metrics: dict[str, dict[str, float]] = {}
    samples: list[dict] = []
    for name in tasks:
        spec = load_task(name)
        docs = [dict(row) for row in spec.load(**(metadata or {}))["test"]]
        if limit is not None:
            docs = docs[:limit]
        prompts = [spec.doc_to_text(doc) for doc in docs]
        images = None
        if spec.doc_to_image is not None:
            images = [(spec.doc_to_image(doc) or [None])[0] for doc in docs]
            if any(image is None for image in images):
                raise ValueError(f"{name}: every document needs a picture")
        replies = generate_replies(
            model, processor, prompts, images, batch_size, task=name, desc=f"{desc} {name}"
        )
        if spec.filter_fn is not None:
            replies = [r[0] for r in spec.filter_fn([[r] for r in replies], docs)]
        per_doc = [
            spec.process_results(doc, [reply]) for doc, reply in zip(docs, replies, strict=True)
        ]
        keys = sorted({k for row in per_doc for k in row})
        metrics[name] = {k: sum(row[k] for row in per_doc) / len(per_doc) for k in keys}
        for doc, reply, verdict in zip(docs, replies, per_doc, strict=True):
            samples.append(
                {
                    "task": name,
                    "id": doc.get("id"),
                    "kind": doc.get("kind"),
                    "split": doc.get("split"),
                    "category": doc.get("category"),
                    "prompt": doc.get("prompt"),
                    "response": reply,
                    **verdict,
                }
            )
    return SafetyScores(metrics, samples)
