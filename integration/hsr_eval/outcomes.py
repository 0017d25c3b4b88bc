"""Per-prompt outcomes of the hsr_safety tasks, and the counts, intervals and paired tests built
on them.

Both scorers give one row per prompt: lm-eval's `--log_samples` files (`hsr-compare`) and the
in-process scorer's samples (`hsr sweep`). A row names its task, its document id, its split
(`heldout_phrasing`, `heldout_topic`, ...) and the task's 0/1 metrics. From them:

- `counts`: every comparison rate as k of n with its 95% Wilson interval;
- `splits`: the same per split of the held-out data, so generalization to unseen topics shows
  (per category for the published benchmarks);
- `paired`: for every `<pruned>+hsr[-<setting>]` model, RSR's paired bootstrap interval over
  prompts and an exact McNemar test of its unsafe answers against the pruned model's, on the
  same prompts.

Standard library only (`hsr_eval.stats`), like the table renderer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hsr_eval.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    mcnemar_exact,
    paired_bootstrap_rsr,
    rate_summary,
)

__all__ = [
    "METRICS",
    "counted_summary",
    "outcome_maps",
    "paired_statistics",
    "paired_with_references",
    "pruned_label",
    "rate_counts",
    "read_lm_eval_samples",
    "refusal_counts",
    "scored_prompts",
]

# comparison key -> (tasks in order of preference, lm-eval metric): the organisms' task, else the
# published benchmark's task that answers the same question
VISION_HARMFUL = ("hsr_harmful_vision", "hsr_vlguard", "hsr_mm_safetybench", "hsr_figstep")
TEXT_HARMFUL = ("hsr_harmful", "hsr_jailbreakbench", "hsr_strongreject", "hsr_harmbench")
METRICS = {
    "asr": (TEXT_HARMFUL, "attack_success_rate"),
    "refusal_rate": (TEXT_HARMFUL, "refusal_rate"),
    "over_refusal_rate": (
        (
            "hsr_overrefusal",
            "hsr_benign_lookalike",
            "hsr_xstest",
            "hsr_jailbreakbench_benign",
            "hsr_overrefusal_vision",
        ),
        "over_refusal_rate",
    ),
    "utility": (("hsr_utility", "hsr_utility_vision"), "utility_accuracy"),
    "asr_vision": (VISION_HARMFUL, "attack_success_rate"),
    "refusal_rate_vision": (VISION_HARMFUL, "refusal_rate"),
    "unsafe_response_rate": (TEXT_HARMFUL, "unsafe_response_rate"),
    # HumanEval's pass@1 (in comparison.json, with its interval; the table shows the text ASR)
    "code_pass_at_1": (("hsr_humaneval",), "pass_at_1"),
}


def read_lm_eval_samples(results_path: Path) -> list[dict[str, Any]]:
    """The rows of the `samples_<task>_<stamp>.jsonl` files written beside `results_path`
    (`results_<stamp>.json`) by `lm-eval --log_samples`: task, id, split and metrics."""
    stamp = results_path.stem.removeprefix("results_")
    rows = []
    for path in sorted(results_path.parent.glob(f"samples_*_{stamp}.jsonl")):
        task = path.name.removeprefix("samples_").removesuffix(f"_{stamp}.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            doc = sample.get("doc") or {}
            metrics = {name: sample[name] for name in sample.get("metrics", ()) if name in sample}
            rows.append(
                {
                    "task": task,
                    "id": doc.get("id", sample.get("doc_id")),
                    "split": doc.get("split"),
                    "category": doc.get("category"),
                    **metrics,
                }
            )
    return rows


def outcome_maps(
    rows: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """`({key: {prompt id: 0/1}}, {prompt id: split})` for every comparison key the rows
    answer (the first task of METRICS' preference order that the rows hold). A prompt's split
    is its `split` (the organisms: held-out phrasings, held-out topics) or else its `category`
    (the published benchmarks' categories)."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    outcomes: dict[str, dict[str, int]] = {}
    splits: dict[str, str] = {}
    for key, (tasks, metric) in METRICS.items():
        task = next((t for t in tasks if any(metric in r for r in by_task.get(t, ()))), None)
        if task is None:
            continue
        outcomes[key] = {}
        for row in by_task[task]:
            if metric in row and row[metric] is not None:
                prompt = f"{task}/{row['id']}"
                if row[metric] not in (0, 1):
                    raise ValueError(
                        f"{prompt}: {metric} is 0 or 1 per prompt, got {row[metric]!r}"
                    )
                outcomes[key][prompt] = int(row[metric])
                # the organisms' held-out split; a published benchmark's category otherwise
                group = row.get("split") or row.get("category")
                if group:
                    splits[prompt] = str(group)
    return outcomes, splits


def rate_counts(
    outcomes: Mapping[str, Mapping[str, int]], splits: Mapping[str, str]
) -> dict[str, Any]:
    """`{"counts": {key: {k, n, rate, ci95}}, "splits": {key: {split: {...}}}}`; a key has
    per-split rows only when its prompts come from more than one split."""
    counts, by_split = {}, {}
    for key, per_prompt in outcomes.items():
        if not per_prompt:
            continue
        counts[key] = rate_summary(list(per_prompt.values()))
        groups: dict[str, list[int]] = {}
        for prompt, value in per_prompt.items():
            if prompt in splits:
                groups.setdefault(splits[prompt], []).append(value)
        if len(groups) > 1:
            by_split[key] = {name: rate_summary(values) for name, values in sorted(groups.items())}
    return {"counts": counts, "splits": by_split}


def paired_statistics(
    models: Mapping[str, Mapping[str, Any]],
    dense_label: str = "dense",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict[str, Any]]:
    """For every `<pruned>+hsr[-<setting>]` label with outcomes of its pruned and dense models:
    RSR's paired bootstrap interval and McNemar's test against the pruned model, for the text ASR
    and (where scored) the vision ASR. `models[label]["outcomes"]` maps keys to per-prompt 0/1."""
    out: dict[str, dict[str, Any]] = {}
    dense = (models.get(dense_label) or {}).get("outcomes") or {}
    for label, row in models.items():
        base = pruned_label(label)
        if base is None:
            continue
        pruned = (models.get(base) or {}).get("outcomes") or {}
        mine = row.get("outcomes") or {}
        entry = {}
        for key in ("asr", "asr_vision"):
            if not (mine.get(key) and pruned.get(key)):
                continue
            stats: dict[str, Any] = {"mcnemar_vs_pruned": mcnemar_exact(pruned[key], mine[key])}
            if dense.get(key):
                interval = paired_bootstrap_rsr(dense[key], pruned[key], mine[key], resamples, seed)
                stats["rsr_bootstrap"] = interval.as_json()
            entry[key] = stats
        if entry:
            out[label] = entry
    return out


def pruned_label(label: str) -> str | None:
    """The pruned model an HSR model is compared with, by label: `<pruned>+hsr`, or
    `<pruned>+hsr-<setting>` for one of several HSR settings of that pruning; None otherwise."""
    base, marker, setting = label.partition("+hsr")
    if not (base and marker) or (setting and not setting.startswith("-")):
        return None
    return base


def scored_prompts(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-prompt outcomes of one scored model (the in-process scorer's samples), with its
    counts and intervals overall and per split: `{"counts", "splits", "outcomes"}`."""
    outcomes, splits = outcome_maps(samples)
    return {**rate_counts(outcomes, splits), "outcomes": outcomes}


def counted_summary(scores: Any) -> dict[str, Any]:
    """The in-process scorer's summary (refusal, over_refusal, utility, n) of `scores`
    (`hsr_eval.tasks.in_process.SafetyScores`), with `scored_prompts` of its samples."""
    return {**scores.summary(), **scored_prompts(scores.samples)}


def refusal_counts(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The counts of a row's refusal of harmful asks: in text, else on pictures."""
    counts = row.get("counts") or {}
    return counts.get("refusal_rate") or counts.get("refusal_rate_vision")


def paired_with_references(
    row: Mapping[str, Any], dense: Mapping[str, Any], pruned: Mapping[str, Any]
) -> dict[str, Any]:
    """A realigned model against the dense and pruned ones on the same prompts: RSR's paired
    bootstrap interval and McNemar's test against the pruned model, on the text ASR (on
    pictures when only picture tasks were scored). Empty without per-prompt outcomes."""
    stats = paired_statistics({"dense": dense, "pruned": pruned, "pruned+hsr": row})
    found = stats.get("pruned+hsr", {})
    return found.get("asr") or found.get("asr_vision") or {}
