"""Report artifacts: the head-score heatmap, the safety bar chart and a Markdown summary.

Inputs are plain dicts: an HSR report (schema version 1, written by HSRModifier) and, optionally,
the comparison written by `integration/hsr_eval/compare.py` (`{"models": {label: {...}}, "rsr":
{...}}`). Figures are built with matplotlib's object API (`Figure`), so importing this module
never changes matplotlib's global backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hsr_eval.files import atomic_path
from hsr_eval.tables import comparison_table, fmt, markdown_table, rsr_lines

__all__ = [
    "comparison_table",
    "head_score_grid",
    "head_scores_figure",
    "plot_head_scores",
    "plot_safety_bars",
    "plot_sweep_pareto",
    "safety_bars_figure",
    "save_figure",
    "summary_markdown",
    "sweep_pareto_figure",
]

METRICS = (
    ("asr", "attack success rate (lower is safer)"),
    ("over_refusal_rate", "over-refusal (lower is better)"),
    ("utility", "utility (higher is better)"),
)


def head_score_grid(report: dict[str, Any]) -> np.ndarray:
    """Scores as a (layers x heads) array; NaN where a head was not scored."""
    heads = report.get("heads") or []
    if not heads:
        raise ValueError("the report lists no scored heads")
    layers = max(h["layer"] for h in heads) + 1
    width = max(h["head"] for h in heads) + 1
    grid = np.full((layers, width), np.nan)
    for h in heads:
        grid[h["layer"], h["head"]] = h["score"]
    return grid


def plot_head_scores(report: dict[str, Any], path: str | Path) -> Path:
    return save_figure(head_scores_figure(report), path)


def head_scores_figure(report: dict[str, Any]) -> Figure:
    """Heatmap of the head scores (layers up, heads across), selected heads framed in red."""
    grid = head_score_grid(report)
    selected = [tuple(x) for x in report.get("selected_heads", [])]
    layers, width = grid.shape
    fig = Figure(figsize=(max(4.0, 0.5 * width + 2), max(3.0, 0.35 * layers + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", origin="lower")
    for layer, head in selected:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    score_name = report.get("config", {}).get("head_score", "score")
    fig.colorbar(image, ax=ax, label=f"head score ({score_name})")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(width))
    ax.set_yticks(range(layers))
    ax.set_title(f"Safety head scores, {len(selected)} selected (red)")
    return fig


def plot_safety_bars(comparison: dict[str, Any], path: str | Path) -> Path:
    return save_figure(safety_bars_figure(comparison), path)


def safety_bars_figure(comparison: dict[str, Any]) -> Figure:
    """One bar panel per metric of METRICS (in percent, n/a as an empty bar), RSR as the title."""
    models = comparison.get("models") or {}
    if not models:
        raise ValueError("the comparison lists no models")
    labels = list(models)
    fig = Figure(figsize=(4.2 * len(METRICS), 3.6))
    axes = fig.subplots(1, len(METRICS))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, METRICS, strict=True):
        values = [_as_percent(models[label].get(key)) for label in labels]
        bars = ax.bar(labels, [0 if v is None else v for v in values], color=colors[: len(labels)])
        for bar, value in zip(bars, values, strict=True):
            text = "n/a" if value is None else f"{value:.1f}"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
            )
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("; ".join(rsr_lines(comparison)) or "RSR: n/a")
    return fig


def summary_markdown(report: dict[str, Any], comparison: dict[str, Any] | None = None) -> str:
    totals = report.get("totals", {})
    config = report.get("config", {})
    lines = [
        "# HSR summary",
        "",
        f"- head score: `{config.get('head_score')}`, neuron score: "
        f"`{config.get('neuron_score')}`, "
        f"slicing: `{config.get('head_slicing')}`",
        "- selected heads (layer, head): "
        f"{', '.join(f'({layer}, {h})' for layer, h in report.get('selected_heads', []))}",
        f"- restored weights: {totals.get('restored', 0):,} of "
        f"{totals.get('pruned_params', 0):,} pruned "
        f"({totals.get('language_params', 0):,} language params)",
        f"- restored per 10,000 params: {fmt(totals.get('restored_per_10k_params'), 4)}; "
        f"per 10,000 pruned: {fmt(totals.get('restored_per_10k_pruned'), 4)}",
        "",
        markdown_table(
            ["module", "restored", "pruned in slice", "candidates"],
            [
                [f"`{r['module']}`", r["restored"], r["pruned_in_slice"], r["candidates"]]
                for r in report.get("restored", [])
            ],
        ),
    ]
    timing = report.get("timing_s", {})
    if timing:
        rows = [[phase, f"{seconds:.2f}"] for phase, seconds in timing.items()]
        lines += ["", markdown_table(["phase", "seconds"], rows)]
    if comparison is not None:
        lines += ["", comparison_table(comparison)]
    return "\n".join(lines) + "\n"


def _as_percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def save_figure(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def plot_sweep_pareto(result: dict[str, Any], path: str | Path) -> Path:
    """`hsr sweep`'s pareto.png: `sweep_pareto_figure`, saved atomically."""
    return save_figure(sweep_pareto_figure(result), path)


def sweep_pareto_figure(result: dict[str, Any]) -> Figure:
    """Refusal against restored weights per point (coloured by utility, labelled with its
    setting), the Pareto front as a grey line, the dense and pruned refusals as horizontal
    lines."""
    rows = result["points"]
    refs = result["references"]
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    xs = [r["restored_per_10k"] for r in rows]
    ys = [100 * r["refusal"] for r in rows]
    colours = [100 * (r["utility"] or 0.0) for r in rows]
    points = ax.scatter(xs, ys, c=colours, cmap="viridis", s=40, zorder=3)
    fig.colorbar(points, ax=ax, label="utility %")
    for x, y, row in zip(xs, ys, rows, strict=True):  # every point named by its setting
        label = ", ".join(f"{field}={value}" for field, value in row["point"].items())
        ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    front = sorted(result["pareto"], key=lambda i: xs[i])
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="grey", lw=1, zorder=2)
    for name, style in (("dense", "-"), ("pruned", "--")):
        ax.axhline(100 * refs[name]["refusal"], color="black", ls=style, lw=1, label=name)
    ax.set_xlabel("restored weights per 10k parameters")
    ax.set_ylabel("refusal of harmful requests %")
    ax.set_title("hsr sweep: safety per restored weight")
    ax.legend(loc="lower right")
    return fig
