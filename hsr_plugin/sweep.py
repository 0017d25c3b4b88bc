"""`hsr sweep`: one pruning, many HSR settings, every one scored by the hsr_safety tasks' scorer.

The recipe's stages before the HSRModifier entry are the pruning; they run once, and the pruned
Linear weights are saved (`pruned_base/`). Every grid point is then one `oneshot` of
`PrunedWeightsModifier` (those weights, put into a fresh dense model) followed by HSRModifier
with the entry's fields and the point's values, so heads are scored on the dense model and
weights restored into the same pruned model every time; points that share the fields deciding
the head scores (`HSRModifier.SCORING_FIELDS`, `head_scoring_key`) score heads once. Stages
after HSR (quantization) are not part of the sweep. The scorer is the one the lm-eval tasks use
(`hsr_eval.tasks.in_process`, installed with hsr-plugin as its hsr-eval dependency).

Writes `sweep.json`, `sweep.md` (a table) and `pareto.png` (restored weights per 10k parameters
against refusal, utility as colour, the dense and pruned models as reference lines).
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any

from loguru import logger

from hsr_plugin.errors import InvalidInputError, StageOrderError

__all__ = [
    "eval_tasks",
    "parse_grid",
    "pareto_front",
    "run_sweep",
    "split_recipe",
    "sweep_markdown",
]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`field=v1,v2` items -> {field: [values]}; values are read as YAML scalars."""
    import yaml

    from hsr_plugin import HSRModifier

    grid: dict[str, list[Any]] = {}
    for item in items:
        field, sep, values = item.partition("=")
        field = field.strip().removeprefix("HSRModifier.")
        if not sep or not field or not values.strip():
            raise InvalidInputError(f"--grid {item!r}: write FIELD=VALUE1,VALUE2,...")
        if field not in HSRModifier.model_fields:
            raise InvalidInputError(f"--grid {item!r}: HSRModifier has no field {field!r}")
        if field in grid:
            raise InvalidInputError(f"--grid names {field} twice")
        grid[field] = [yaml.safe_load(v.strip()) for v in values.split(",")]
    if not grid:
        raise InvalidInputError("hsr sweep needs at least one --grid FIELD=VALUES")
    return grid


def split_recipe(recipe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(the stages before HSR's, the HSRModifier entry's fields, the stages after it)."""
    stages = list(recipe.items())
    for index, (_key, stage) in enumerate(stages):
        for group_key, group in (stage or {}).items():
            if group_key.endswith("_modifiers") and "HSRModifier" in (group or {}):
                others = [name for name in group if name != "HSRModifier"]
                if others:
                    raise InvalidInputError(
                        f"the HSR stage also holds {others[0]}: give HSRModifier a stage of "
                        "its own for the sweep"
                    )
                before = dict(copy.deepcopy(stages[:index]))
                if not before:
                    raise InvalidInputError("the recipe has no pruning stage before HSRModifier")
                fields = dict(group["HSRModifier"] or {})
                return before, fields, [key for key, _ in stages[index + 1 :]]
    raise InvalidInputError("the recipe has no HSRModifier entry: the sweep varies its fields")


def points(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every grid point's HSRModifier fields, validated now (before any long work)."""
    from hsr_plugin import HSRModifier

    fields = list(grid)
    result = []
    for values in itertools.product(*(grid[f] for f in fields)):
        point = dict(zip(fields, values, strict=True))
        HSRModifier(**{**base, **point})  # a pydantic error names the bad field
        result.append(point)
    return result


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the points no other point beats: as much refusal for fewer restored weights."""
    front = []
    for i, row in enumerate(rows):
        beaten = any(
            other["restored_per_10k"] <= row["restored_per_10k"]
            and other["refusal"] >= row["refusal"]
            and (
                other["restored_per_10k"] < row["restored_per_10k"]
                or other["refusal"] > row["refusal"]
            )
            for j, other in enumerate(rows)
            if j != i
        )
        if not beaten:
            front.append(i)
    return front


def head_scoring_key(fields: dict) -> str:
    """The values of the fields that decide the head scores (`HSRModifier.SCORING_FIELDS`, with
    the defaults filled in): grid points with equal keys get equal head scores."""
    from hsr_plugin.modifier import HSRModifier

    hsr = HSRModifier(**fields)
    names = list(HSRModifier.SCORING_FIELDS)
    # where the adaptive stop stops, and how many heads a screen verifies, depend on h
    if hsr.head_prompts == "adaptive" or hsr.head_rerun == "screened":
        names.append("num_heads")
    return repr([(name, getattr(hsr, name)) for name in names])


def load_sweep_model(path: str):
    """The model the sweep prunes: its family's class, float32 without an accelerator."""
    import torch

    from hsr_plugin.models import load_model

    # the checkpoint's own dtype on an accelerator; float32 on the CPU, where half precision
    # is slow
    return load_model(path, "auto" if torch.accelerator.is_available() else torch.float32)


def _judge() -> str:
    from hsr_eval.tasks.judge_adapters import describe_judges

    return describe_judges()


def default_scorer():
    """The hsr_safety tasks' in-process scorer and its text and vision task names."""
    from hsr_eval.tasks.in_process import TEXT_TASKS, VISION_TASKS, score_model

    return score_model, TEXT_TASKS, VISION_TASKS


def eval_tasks(eval_data: Path) -> tuple[str, ...]:
    """The hsr_safety tasks for the held-out files in `eval_data`.

    The vision tasks when it has pictures (heldout_harmful_vision.jsonl), else the text ones;
    every held-out set must be there, in one form or the other.
    """
    _, text_tasks, vision_tasks = default_scorer()
    for name in ("heldout_harmful", "heldout_borderline", "heldout_utility"):
        if not any((eval_data / f"{name}{s}.jsonl").is_file() for s in ("", "_vision")):
            raise InvalidInputError(f"--eval-data {eval_data} has no {name}.jsonl")
    vision = (eval_data / "heldout_harmful_vision.jsonl").is_file()
    return tuple(vision_tasks if vision else text_tasks)


def run_sweep(
    model: str,
    recipe: dict[str, Any],
    grid: dict[str, list[Any]],
    dataset_kwargs: dict[str, Any],
    output: Path,
    eval_data: Path,
    eval_limit: int | None = None,
) -> dict[str, Any]:
    """Prune once into `output/pruned_base`, run and score every point; write the results."""
    import yaml
    from llmcompressor import oneshot

    from hsr_eval.files import folder_digest, write_json_atomic, write_text_atomic
    from hsr_eval.outcomes import counted_summary, paired_with_references
    from hsr_plugin import HSRModifier
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.pruned_base import PrunedWeightsModifier, save_pruned_weights
    from hsr_plugin.score_records import HeadScore

    pruning, base, after = split_recipe(recipe)
    planned = points(base, grid)
    score_model = default_scorer()[0]
    tasks = eval_tasks(eval_data)
    if after:
        logger.info(f"hsr sweep: the stages after HSR ({', '.join(after)}) are not swept")
    processor = load_processor(model)
    metadata = {"data_dir": str(eval_data)}

    def score(m, desc: str) -> dict[str, Any]:
        return counted_summary(
            score_model(m, processor, tasks, metadata, limit=eval_limit, desc=desc)
        )

    started = time.monotonic()
    logger.info(f"hsr sweep: pruning once with {', '.join(pruning)}")
    pruned = load_sweep_model(model)
    oneshot(
        model=pruned,
        processor=processor,
        recipe=yaml.safe_dump(pruning, sort_keys=False),
        **dataset_kwargs,
    )
    dense = load_sweep_model(model)
    base_dir = output / "pruned_base"
    weights = save_pruned_weights(pruned, base_dir, reference=dense)
    base_digest = folder_digest(base_dir)
    references = {"dense": score(dense, "dense"), "pruned": score(pruned, "pruned")}
    del dense, pruned

    rows = []
    head_scores: dict[str, list] = {}  # heads are scored once per scoring setting
    for index, point in enumerate(planned, 1):
        logger.info(f"hsr sweep: point {index}/{len(planned)}: {point}")
        fields = {**base, **point}
        key = head_scoring_key(fields)
        hsr = HSRModifier(**fields, reuse_head_scores=head_scores.get(key))
        restored_model = load_sweep_model(model)
        oneshot(
            model=restored_model,
            processor=processor,
            recipe=[PrunedWeightsModifier(path=str(weights)), hsr],
        )
        if key not in head_scores:
            head_scores[key] = [
                HeadScore(h["layer"], h["head"], h["kv_group"], h["score"])
                for h in hsr.report["heads"]
            ]
        totals = hsr.report["totals"]
        rows.append(
            {
                "point": point,
                "restored": totals["restored"],
                "restored_per_10k": totals["restored_per_10k_params"],
                **score(restored_model, f"point {index}"),
            }
        )
        del restored_model
    if folder_digest(base_dir) != base_digest:
        raise StageOrderError(f"{base_dir} changed during the sweep")
    for row in rows:
        row["paired"] = paired_with_references(row, references["dense"], references["pruned"])
    result = {
        "model": model,
        "grid": grid,
        "hsr_fields": base,
        "pruning": pruning,
        "references": references,
        "points": rows,
        "pareto": pareto_front(rows),
        "pruned_base": {"file": str(weights.relative_to(output)), "digest": base_digest},
        "eval_data": str(eval_data),
        "eval_limit": eval_limit,
        "judge": _judge(),
        "seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(output / "sweep.json", result)
    write_text_atomic(output / "sweep.md", sweep_markdown(result))
    from hsr_plugin.plots import plot_sweep_pareto  # matplotlib, only once there is a result

    plot_sweep_pareto(result, output / "pareto.png")
    return result


def sweep_markdown(result: dict[str, Any]) -> str:
    from hsr_eval.tables import INTERVALS_NOTE, SAFETY_HEADERS, fmt, markdown_table, safety_cells

    fields = list(result["grid"])
    refs = result["references"]
    front = set(result["pareto"])
    body = [
        [
            name,
            *[""] * len(fields),
            "",
            "",
            *safety_cells(r, refs["dense"], refs["pruned"], True),
            "",
        ]
        for name, r in refs.items()
    ]
    for i, row in enumerate(result["points"]):
        body.append(
            [
                "HSR",
                *[str(row["point"][f]) for f in fields],
                row["restored"],
                fmt(row["restored_per_10k"], 3),
                *safety_cells(row, refs["dense"], refs["pruned"]),
                "yes" if i in front else "",
            ]
        )
    table = markdown_table(
        [
            "model",
            *fields,
            "restored",
            "per 10k params",
            *SAFETY_HEADERS,
            "Pareto",
        ],  # fmt: skip
        body,
    )
    return (
        f"# hsr sweep: {result['model']}\n\n{table}\n\n"
        f"_Scored by the hsr_safety tasks' scorer on {result['eval_data']}"
        + (f" (first {result['eval_limit']} per task)" if result["eval_limit"] else "")
        + (f", judge {result['judge']}" if result.get("judge") else "")
        + f"; {len(result['points'])} points over one pruning, in {result['seconds']} s. "
        + INTERVALS_NOTE
        + "_\n"
    )
