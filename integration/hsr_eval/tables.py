"""The one Markdown table renderer, and the model-comparison table built on it.

Dependency-free (standard library only), so the serving virtualenv renders the same tables as
`hsr report`. A comparison is the dict written by the comparison runner
(`integration/hsr_eval/compare.py`): `{"models": {label: {asr, refusal_rate, over_refusal_rate,
utility, sparsity, n, counts, splits, ...}}, "rsr": {label: {"value", "pruned", "dense", "reason",
"ci95", "mcnemar_vs_pruned"} | number}}`. Where a row carries `counts` (k of n and a 95% interval
per rate, `hsr_eval.outcomes`), its cells show the interval too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "INTERVALS_NOTE",
    "SAFETY_HEADERS",
    "comparison_table",
    "fmt",
    "interval_cell",
    "markdown_table",
    "p_value_cell",
    "percent",
    "rate_cell",
    "rsr_cell",
    "rsr_lines",
    "safety_cells",
    "split_table",
]

SAFETY_HEADERS = ("refusal %", "RSR", "McNemar p vs pruned", "over-refusal %", "utility %")
INTERVALS_NOTE = (
    "Rates in % with 95% Wilson intervals; RSR with a 95% paired bootstrap interval over prompts "
    "(2000 resamples, seed 0); McNemar p: an exact test of the unsafe answers against the pruned "
    "model's on the same prompts."
)

# comparison key -> column title; rates are shown in percent
COMPARISON_COLUMNS = (
    ("asr", "ASR %"),
    ("refusal_rate", "refusal %"),
    ("over_refusal_rate", "over-refusal %"),
    ("utility", "utility %"),
    ("sparsity", "sparsity %"),
)


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1
) -> str:
    """A GitHub Markdown table; columns from `numeric_from` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells for {len(headers)} columns: {row!r}")
        # a pipe inside a cell would start a new column
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.{digits}f}"


def interval_cell(counts: dict[str, Any] | None, value: float | None = None) -> str:
    """A rate in percent with its 95% interval, `57.0 [50.1, 63.7]`, from its counts
    (`{k, n, rate, ci95}`); without counts, `value` alone."""
    if not counts:
        return percent(value)
    low, high = counts["ci95"]
    return f"{percent(counts['rate'])} [{percent(low)}, {percent(high)}]"


def rate_cell(row: dict[str, Any], key: str) -> str:
    """A row's rate `key` in percent, with its 95% interval when the row counts it."""
    return interval_cell((row.get("counts") or {}).get(key), row.get(key))


def rsr_cell(value: float | None, paired: dict[str, Any] | None = None) -> str:
    """RSR in whole percent with its paired bootstrap interval when measured: `63% [41%, 85%]`."""
    if value is None:
        return ""
    ci = ((paired or {}).get("rsr_bootstrap") or {}).get("ci95")
    interval = "" if ci is None else f" [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]"
    return f"{100 * value:.0f}%{interval}"


def p_value_cell(paired: dict[str, Any] | None) -> str:
    """McNemar's p against the pruned model, where measured."""
    test = (paired or {}).get("mcnemar_vs_pruned")
    return "" if test is None else f"{test['p_value']:.3g}"


def _paired_text(entry: dict[str, Any]) -> str:
    text = ""
    if "ci95" in entry:
        ci, boot = entry["ci95"], entry.get("bootstrap") or {}
        interval = "n/a" if ci is None else f"{100 * ci[0]:.1f}% to {100 * ci[1]:.1f}%"
        text += f"; 95% CI {interval} (paired bootstrap, {boot.get('resamples')} resamples)"
    test = entry.get("mcnemar_vs_pruned")
    if test:
        text += (
            f"; vs {entry.get('pruned', 'pruned')}: {test['b']} prompts made safe, {test['c']} "
            f"made unsafe of {test['n']}, McNemar p = {test['p_value']:.3g}"
        )
    return text


def safety_cells(
    row: dict[str, Any], dense: dict[str, Any], pruned: dict[str, Any], reference: bool = False
) -> list[str]:
    """The cells under SAFETY_HEADERS for one scored model of an in-process table (the sweep,
    the benchmarks): refusal, RSR against `dense` and `pruned`, McNemar's p against `pruned`,
    over-refusal and utility, each with its interval where the rows carry per-prompt counts
    (`hsr_eval.outcomes.counted_summary`). A `reference` row (dense, pruned) has no RSR."""
    from hsr_eval.outcomes import paired_with_references, refusal_counts

    counts = row.get("counts") or {}
    cells = [interval_cell(refusal_counts(row), row["refusal"])]
    if reference:
        cells += ["", ""]
    else:
        lost = dense["refusal"] - pruned["refusal"]
        value = None if abs(lost) < 1e-9 else (row["refusal"] - pruned["refusal"]) / lost
        paired = row.get("paired")
        if paired is None and row.get("outcomes") and pruned.get("outcomes"):
            paired = paired_with_references(row, dense, pruned)
        cells += [rsr_cell(value, paired) or "n/a", p_value_cell(paired)]
    cells.append(interval_cell(counts.get("over_refusal_rate"), row["over_refusal"]))
    cells.append(interval_cell(counts.get("utility"), row["utility"]))
    return cells


def rsr_lines(comparison: dict[str, Any]) -> list[str]:
    """`RSR <label>: <value>%` for every realigned model (a number or the runner's dict), with
    its interval and paired test when measured."""
    lines = []
    for label, entry in (comparison.get("rsr") or {}).items():
        if isinstance(entry, dict):
            value, reason = entry.get("value"), entry.get("reason")
            against = f" (vs {entry['pruned']} and {entry['dense']})" if entry.get("pruned") else ""
            paired = _paired_text(entry)
        else:
            value, reason, against, paired = entry, None, "", ""
        text = "n/a" if value is None else f"{100 * value:.1f}%"
        lines.append(f"RSR {label}: {text}{against}{paired}" + (f": {reason}" if reason else ""))
    return lines


def split_table(models: dict[str, dict[str, Any]], key: str, title: str) -> str | None:
    """`key`'s rate per split of the held-out data for every model that has splits, or None."""
    rows = []
    for label, row in models.items():
        for split, counts in ((row.get("splits") or {}).get(key) or {}).items():
            low, high = counts["ci95"]
            rows.append(
                [label, split, f"{percent(counts['rate'])} [{percent(low)}, {percent(high)}]",
                 f"{counts['k']} of {counts['n']}"]
            )  # fmt: skip
    if not rows:
        return None
    return markdown_table(["model", "split", f"{title} % [95% CI]", "count"], rows, numeric_from=2)


def comparison_table(comparison: dict[str, Any]) -> str:
    """ASR, refusal, over-refusal, utility and sparsity per model, then the RSR lines.

    A column for the number of harmful prompts appears when the rows carry counts, one for
    the vision ASR when any model was scored on pictures, and one for the unsafe-response rate
    (with the guard's hazard categories below the table) when a guard judged harm.
    """
    models = comparison.get("models") or {}
    with_n = any(isinstance(row.get("n"), dict) for row in models.values())
    with_vision = any(row.get("asr_vision") is not None for row in models.values())
    with_unsafe = any(row.get("unsafe_response_rate") is not None for row in models.values())
    headers = ["model", *(title for _, title in COMPARISON_COLUMNS)]
    headers += ["n (harmful)"] * with_n + ["ASR vision %"] * with_vision
    headers += ["unsafe responses %"] * with_unsafe
    rows = []
    for label, row in models.items():
        cells = [label, *(rate_cell(row, key) for key, _ in COMPARISON_COLUMNS)]
        if with_n:
            cells.append((row.get("n") or {}).get("hsr_harmful", "n/a"))
        if with_vision:
            cells.append(rate_cell(row, "asr_vision"))
        if with_unsafe:
            cells.append(rate_cell(row, "unsafe_response_rate"))
        rows.append(cells)
    parts = [markdown_table(headers, rows)]
    categories = [
        f"{label}: " + ", ".join(f"{c} x{n}" for c, n in row["unsafe_categories"].items())
        for label, row in models.items()
        if row.get("unsafe_categories")
    ]
    if categories:
        parts += ["", "Hazard categories of the unsafe responses: " + "; ".join(categories) + "."]
    for key, title in (("asr", "ASR"), ("asr_vision", "ASR vision")):
        table = split_table(models, key, title)
        if table:
            parts += ["", f"{title} by split of the held-out prompts:", "", table]
    lines = rsr_lines(comparison) or ["RSR: n/a"]
    parts += ["", "\n".join(lines)]
    if any(isinstance(row.get("counts"), dict) for row in models.values()):
        parts += ["", INTERVALS_NOTE]
    first = next(iter(models.values()), {})
    if first.get("judge") or first.get("backend"):
        parts += ["", f"Judge: {first.get('judge')}; backend: {first.get('backend')}."]
    return "\n".join(parts)
