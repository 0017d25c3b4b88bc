"""The one Markdown table renderer, and the model-comparison table built on it.

Dependency-free (standard library only), so the serving virtualenv renders the same tables as
`hsr report`. A comparison is the dict written by the comparison runner
(`integration/serving/compare.py`): `{"models": {label: {asr, refusal_rate, over_refusal_rate,
utility, sparsity, n, ...}}, "rsr": {label: {"value", "pruned", "dense", "reason"} | number}}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["comparison_table", "fmt", "markdown_table", "percent", "rsr_lines"]

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


def rsr_lines(comparison: dict[str, Any]) -> list[str]:
    """`RSR <label>: <value>%` for every realigned model (a number or the runner's dict)."""
    lines = []
    for label, entry in (comparison.get("rsr") or {}).items():
        if isinstance(entry, dict):
            value, reason = entry.get("value"), entry.get("reason")
            against = f" (vs {entry['pruned']} and {entry['dense']})" if entry.get("pruned") else ""
        else:
            value, reason, against = entry, None, ""
        text = "n/a" if value is None else f"{100 * value:.1f}%"
        lines.append(f"RSR {label}: {text}{against}" + (f": {reason}" if reason else ""))
    return lines


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
        cells = [label, *(percent(row.get(key)) for key, _ in COMPARISON_COLUMNS)]
        if with_n:
            cells.append((row.get("n") or {}).get("hsr_harmful", "n/a"))
        if with_vision:
            cells.append(percent(row.get("asr_vision")))
        if with_unsafe:
            cells.append(percent(row.get("unsafe_response_rate")))
        rows.append(cells)
    parts = [markdown_table(headers, rows)]
    categories = [
        f"{label}: " + ", ".join(f"{c} x{n}" for c, n in row["unsafe_categories"].items())
        for label, row in models.items()
        if row.get("unsafe_categories")
    ]
    if categories:
        parts += ["", "Hazard categories of the unsafe responses: " + "; ".join(categories) + "."]
    lines = rsr_lines(comparison) or ["RSR: n/a"]
    parts += ["", "\n".join(lines)]
    first = next(iter(models.values()), {})
    if first.get("judge") or first.get("backend"):
        parts += ["", f"Judge: {first.get('judge')}; backend: {first.get('backend')}."]
    return "\n".join(parts)
