"""The records head scoring returns: one score per head (`HeadScore`) and the work it took
(`AttributionCost`), shared by the exact ablation scores (`hsr_plugin.exact_head_scores`), the
first-order scores (`hsr_plugin.first_order_scores`), the stages that choose between them and the
report."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AttributionCost", "HeadScore"]


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    kv_group: int
    score: float


@dataclass
class AttributionCost:
    """Work done, in decoder-layer passes of one token (padding included).

    `unit` is the work of one intact forward pass of the whole model over the safety prompts, so
    `forward_equivalents` compares directly with the naive loop's (heads + 1) full passes. A
    backward pass that computes activation gradients only (no weight gradients) counts as one
    forward pass. Under torchrun, `work` is the sum over ranks and `ranks` holds each rank's
    share: its layers, its work and its seconds. `prompts`: the safety prompts scored (fewer
    than offered when an `AdaptiveStop` stopped early; `unit` still covers all offered, so an
    early stop shows as fewer forward-pass equivalents). `rounds`: with an `AdaptiveStop`, the
    prompts read and the top set, best first, at the end of each round.
    """

    work: float = 0.0
    unit: float = 0.0
    prompts: int = 0
    rounds: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)

    @property
    def forward_equivalents(self) -> float:
        return self.work / self.unit if self.unit else 0.0
