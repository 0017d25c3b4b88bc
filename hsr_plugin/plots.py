"""Report artifacts: the head-score heatmap, the safety bar chart and a Markdown summary.

Inputs are plain dicts: an HSR report (schema version 1, written by HSRModifier) and, optionally,
the comparison written by `integration/evaluate.py` (`{"models": {label: {...}}, "rsr": {...}}`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["head_score_grid", "plot_head_scores", "plot_safety_bars", "summary_markdown"]

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
    grid = head_score_grid(report)
    selected = [tuple(x) for x in report.get("selected_heads", [])]
    layers, width = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * width + 2), max(3.0, 0.35 * layers + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", origin="lower")
    for layer, head in selected:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    score_name = report.get("config", {}).get("head_score", "score")
    fig.colorbar(image, ax=ax, label=f"head score ({score_name})")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(width))
    ax.set_yticks(range(layers))
    ax.set_title(f"Safety head scores, {len(selected)} selected (red)")
    return _save(fig, path)


def plot_safety_bars(comparison: dict[str, Any], path: str | Path) -> Path:
    models = comparison.get("models") or {}
    if not models:
        raise ValueError("the comparison lists no models")
    labels = list(models)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, METRICS):
        values = [_as_percent(models[label].get(key)) for label in labels]
        bars = ax.bar(labels, [0 if v is None else v for v in values], color=colors[: len(labels)])
        for bar, value in zip(bars, values):
            text = "n/a" if value is None else f"{value:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(_rsr_title(comparison))
    return _save(fig, path)


def summary_markdown(report: dict[str, Any], comparison: dict[str, Any] | None = None) -> str:
    totals = report.get("totals", {})
    config = report.get("config", {})
    lines = [
        "# HSR summary",
        "",
        f"- head score: `{config.get('head_score')}`, neuron score: `{config.get('neuron_score')}`, "
        f"slicing: `{config.get('head_slicing')}`",
        f"- selected heads (layer, head): {', '.join(f'({l}, {h})' for l, h in report.get('selected_heads', []))}",
        f"- restored weights: {totals.get('restored', 0):,} of {totals.get('pruned_params', 0):,} pruned "
        f"({totals.get('language_params', 0):,} language params)",
        f"- restored per 10,000 params: {_fmt(totals.get('restored_per_10k_params'), 4)}; "
        f"per 10,000 pruned: {_fmt(totals.get('restored_per_10k_pruned'), 4)}",
        "",
        "| module | restored | pruned in slice | candidates |",
        "|---|---:|---:|---:|",
    ]
    for row in report.get("restored", []):
        lines.append(f"| `{row['module']}` | {row['restored']} | {row['pruned_in_slice']} | {row['candidates']} |")
    timing = report.get("timing_s", {})
    if timing:
        lines += ["", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {phase} | {seconds:.2f} |" for phase, seconds in timing.items()]
    if comparison is not None:
        lines += ["", comparison_table(comparison)]
    return "\n".join(lines) + "\n"


def comparison_table(comparison: dict[str, Any]) -> str:
    lines = [
        "| model | ASR % | refusal % | over-refusal % | utility % | sparsity % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in comparison.get("models", {}).items():
        cells = [row.get(k) for k in ("asr", "refusal_rate", "over_refusal_rate", "utility", "sparsity")]
        lines.append(f"| {label} | " + " | ".join(_fmt(_as_percent(c), 1) for c in cells) + " |")
    lines += ["", _rsr_title(comparison)]
    return "\n".join(lines)


def _rsr_title(comparison: dict[str, Any]) -> str:
    rsr = comparison.get("rsr") or {}
    parts = []
    for label, value in rsr.items():
        number = value.get("value") if isinstance(value, dict) else value
        parts.append(f"RSR {label}: " + ("n/a" if number is None else f"{100 * number:.1f}%"))
    return "; ".join(parts) or "RSR: n/a"


def _as_percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
