"""The HSR report (schema version 1): what was scored, selected and restored, and how long it took.

    {"schema_version": 1, "config": {...every field...}, "model": {...},
     "heads": [{layer, head, kv_group, score}, ...]    # sorted by score, descending
     "selected_heads": [[layer, head], ...],
     "restored": [{module, restored, pruned_in_slice, candidates, unit}, ...],
     "selected_mlp_channels": [{layer, channel, score}, ...],   # units: [heads, mlp]
     "totals": {restored, restored_in_heads, restored_in_mlp, language_params, pruned_params,
                restored_per_10k_params, restored_per_10k_pruned},
     "timing_s": {phase: seconds},
     "scoring": {device, placement, head_scoring_forward_equivalents}, "notes": [...]}
`candidates` counts the neuron-level candidates inside the selected units' slices (for
`restore_gain`: the pruned weights there with a positive safety gain and no utility harm beyond
the tolerance, before the budget).
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from hsr_plugin.models import model_name_or_path

__all__ = ["SCHEMA_VERSION", "build_report", "log_summary", "model_info", "totals"]

SCHEMA_VERSION = 1
SPARSEGPT_NOTE = (
    "SparseGPT updated the surviving weights (OBS update); HSR copies dense values back only at "
    "pruned positions, as the paper does, so restored weights sit among updated ones"
)


def build_report(
    *,
    config: dict[str, Any],
    model: dict[str, Any],
    pruned_by: list[str],
    head_scores: list,
    selected: list[tuple[int, int]],
    rows: list[dict],
    language_params: int,
    pruned_params: int,
    timing: dict[str, float],
    scoring: dict[str, Any] | None = None,
    mlp_selected: list[tuple[int, int, float]] | None = None,
) -> dict[str, Any]:
    """Assemble the report: heads sorted by score (ties by layer, head), totals and notes."""
    notes = []
    if "SparseGPTModifier" in pruned_by:
        notes.append(SPARSEGPT_NOTE)
    if config.get("head_score") == "reference":
        notes.append("reference head score: one score per KV group, reported as head index g")
    heads = sorted(head_scores, key=lambda s: (-s.score, s.layer, s.head))
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "model": model,
        "pruned_by": pruned_by,
        "heads": [
            {"layer": s.layer, "head": s.head, "kv_group": s.kv_group, "score": s.score}
            for s in heads
        ],
        "selected_heads": [[layer, head] for layer, head in selected],
        "restored": rows,
        "selected_mlp_channels": [
            {"layer": layer, "channel": channel, "score": score}
            for layer, channel, score in (mlp_selected or [])
        ],
        "totals": totals(rows, language_params, pruned_params),
        "timing_s": {k: round(v, 4) for k, v in timing.items()},
        "scoring": scoring or {},
        "notes": notes,
    }


def totals(restored_rows: list[dict], language_params: int, pruned_params: int) -> dict[str, Any]:
    restored = sum(row["restored"] for row in restored_rows)
    by_unit = {
        unit: sum(row["restored"] for row in restored_rows if row.get("unit", "heads") == unit)
        for unit in ("heads", "mlp")
    }
    return {
        "restored": restored,
        "restored_in_heads": by_unit["heads"],
        "restored_in_mlp": by_unit["mlp"],
        "language_params": language_params,
        "pruned_params": pruned_params,
        "restored_per_10k_params": 1e4 * restored / language_params if language_params else 0.0,
        "restored_per_10k_pruned": 1e4 * restored / pruned_params if pruned_params else 0.0,
    }


_RERUN_NOTE = {
    "last_position": " (last position re-run)",
    "screened": " (last position screen, exact re-run of the top candidates)",
}


def log_summary(report: dict[str, Any]) -> None:
    cfg, tot = report["config"], report["totals"]
    top = ", ".join(f"L{h['layer']}H{h['head']}={h['score']:.4g}" for h in report["heads"][:5])
    lines = [
        "HSR summary",
        f"  head score {cfg['head_score']}"
        f"{_RERUN_NOTE.get(cfg.get('head_rerun'), '')} | "
        f"neuron score {cfg['neuron_score']} | slicing "
        f"{cfg['head_slicing']}",
        f"  top heads: {top}",
        f"  selected ({len(report['selected_heads'])}): "
        f"{', '.join(f'L{layer}H{h}' for layer, h in report['selected_heads'])}",
        f"  restored {tot['restored']:,} weights of {tot['pruned_params']:,} pruned "
        f"({tot['restored_per_10k_params']:.4f} per 10k params, "
        f"{tot['restored_per_10k_pruned']:.4f} per 10k pruned)",
        "  timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in report["timing_s"].items()),
    ]
    mlp = report.get("selected_mlp_channels") or []
    if mlp:
        lines.insert(
            5,
            f"  MLP channels ({len(mlp)}): {tot['restored_in_mlp']:,} restored there, "
            f"{tot['restored_in_heads']:,} in the heads",
        )
    scoring = report.get("scoring") or {}
    if scoring:
        lines.append(
            f"  scored on {scoring.get('device')} ({scoring.get('placement')}), head scoring "
            f"{scoring.get('head_scoring_forward_equivalents')} forward-pass equivalents"
            + (f", budget {scoring['budget']:,}" if "budget" in scoring else "")
        )
    lines += [f"  note: {note}" for note in report.get("notes", [])]
    logger.info("\n".join(lines))


def model_info(model, blocks: list) -> dict[str, Any]:
    """The report's `model` section: class, path and the attention layout of the scored blocks."""
    info = {
        "class": type(model).__name__,
        "name_or_path": model_name_or_path(model),
        "attention_blocks": len(blocks),
        "num_heads": blocks[0].num_heads,
        "num_kv_heads": blocks[0].num_kv_heads,
        "head_dim": blocks[0].head_dim,
        "attention_layout": blocks[0].layout,
    }
    unsliced = [name for b in blocks for name in b.unsliced]
    if unsliced:
        # MLA's shared low-rank down-projections serve every head: HSR leaves them as pruned
        info["unsliced_projections"] = unsliced
        logger.info(
            f"HSR: {len(unsliced)} shared projections belong to no head and stay as pruned "
            f"({unsliced[0]}, ...)"
        )
    return info
