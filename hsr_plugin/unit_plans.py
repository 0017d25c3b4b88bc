"""Unit planners: which weights of which Linear layers belong to the selected units (attention
heads, MLP channels), as typed plans that the restoration policies fill in and apply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from compressed_tensors.utils import align_module_device
from torch import nn

from hsr_plugin.architecture import AttentionBlock
from hsr_plugin.calibration import CalibrationSample
from hsr_plugin.checks import require_finite
from hsr_plugin.dense_source import DenseSource
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.first_order_scores import first_order_unit_scores
from hsr_plugin.mlp_blocks import find_mlp_blocks
from hsr_plugin.ranking import rank_units, select_top
from hsr_plugin.score_records import HeadScore
from hsr_plugin.scoring_context import ScoringContext
from hsr_plugin.slicing import HeadSlicing, band_mask, mlp_channel_slices

__all__ = ["MLPChannelChoice", "UnitPlan", "plan_heads", "plan_mlp_channels"]


@dataclass
class UnitPlan:
    """One Linear layer's share of the selected units.

    `slices`: its weights that belong to a selected unit (a bool mask of the weight's shape);
    `row_blocks`: for a fused [q; k; v] projection, the row blocks ranked as separate matrices;
    `candidates` and `priority`: filled on the dense model by the paper's neuron level (None
    for restore_gain, which chooses on the pruned model)."""

    module: nn.Linear
    slices: torch.Tensor
    unit: Literal["heads", "mlp"] = "heads"
    row_blocks: tuple[tuple[int, int], ...] = ()
    candidates: torch.Tensor | None = None
    priority: torch.Tensor | None = None


@dataclass(frozen=True)
class MLPChannelChoice:
    layer: int
    channel: int
    score: float


def plan_heads(
    blocks: list[AttentionBlock],
    head_scores: list[HeadScore],
    selected: list[tuple[int, int]],
    slicing: HeadSlicing,
) -> dict[str, UnitPlan]:
    """The head bands of the selected (layer, head) units, per Linear layer."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    kv_of = {(s.layer, s.head): s.kv_group for s in head_scores}
    for layer, head in selected:
        by_layer.setdefault(layer, []).append((head, kv_of[(layer, head)]))
    plans: dict[str, UnitPlan] = {}
    for block in (b for b in blocks if b.layer in by_layer):
        for sliced in block.sliced_projections():
            module = sliced.module
            mask = band_mask(
                (module.out_features, module.in_features),
                sliced.axis,
                sliced.bands,
                by_layer[block.layer],
                block.num_heads,
                slicing,
            )
            plans[sliced.name] = UnitPlan(module, mask, "heads", sliced.row_blocks)
    return plans


def plan_mlp_channels(
    ctx: ScoringContext,
    safety: list[CalibrationSample],
    num_channels: int,
    dense: DenseSource | None,
) -> tuple[dict[str, UnitPlan], list[MLPChannelChoice]]:
    """Rank the MLP channels of the targeted layers (first order) and plan the top ones."""
    mlps = find_mlp_blocks(ctx.model, layers=[b.layer for b in ctx.blocks])
    total = sum(m.intermediate for m in mlps)
    if num_channels > total:
        raise InvalidInputError(
            f"num_mlp_channels={num_channels} exceeds the {total} MLP channels of "
            "the targeted layers"
        )
    for mlp in mlps:
        for _, name, module in mlp.projections():
            with align_module_device(module):
                require_finite(module.weight, f"weight of {name}")
    if dense is not None:
        dense.check({name: m for mlp in mlps for _, name, m in mlp.projections()})
    sites = {mlp.layer: (mlp.projection("down"), mlp.intermediate, 1) for mlp in mlps}
    scores = first_order_unit_scores(
        ctx.model, sites, safety, ctx.batch_size, ctx.pad_id, ctx.device, ctx.hooks,
        what="MLP channel scores", collective=ctx.collective,
    )  # fmt: skip
    ranked = rank_units(
        {(layer, c): float(v) for layer, t in scores.items() for c, v in enumerate(t)},
        "MLP channel",
    )
    chosen = select_top(ranked, num_channels, "num_mlp_channels", "MLP channels")
    by_key = dict(ranked)
    choices = [MLPChannelChoice(layer, c, by_key[(layer, c)]) for layer, c in chosen]
    channels: dict[int, list[int]] = {}
    for layer, channel in chosen:
        channels.setdefault(layer, []).append(channel)
    plans: dict[str, UnitPlan] = {}
    for mlp in (m for m in mlps if m.layer in channels):
        for short, name, module in mlp.projections():
            shape = (module.out_features, module.in_features)
            plans[name] = UnitPlan(module, mlp_channel_slices(shape, short, channels[mlp.layer]),
                                   "mlp")  # fmt: skip
    return plans, choices
