"""Head scorers, one per `head_score`, behind one interface: each scores every unit of the
targeted blocks on the safety prompts (a head, or a KV group for the reference score).

- `AblationHeadScorer`: the exact scores that ablate each head and re-run the decoder from its
  layer (`ships_subspace`, `ships_kl`) and the authors' code (`reference`, per KV group);
- `FirstOrderHeadScorer`: attribution patching, one forward and one backward pass per batch.
The math lives in `hsr_plugin.attribution` and `hsr_plugin.head_score_math`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hsr_plugin.architecture import AttentionBlock
from hsr_plugin.calibration import CalibrationSample
from hsr_plugin.exact_head_scores import AdaptiveStop, score_heads
from hsr_plugin.score_records import AttributionCost, HeadScore
from hsr_plugin.scoring_context import ScoringContext

__all__ = ["AblationHeadScorer", "FirstOrderHeadScorer", "HeadScorer", "head_scorer"]


class HeadScorer(Protocol):
    method: str

    def units(self, block: AttentionBlock) -> int:
        """How many units of `block` get a score."""
        ...

    def score(
        self, ctx: ScoringContext, samples: list[CalibrationSample], cost: AttributionCost
    ) -> list[HeadScore]: ...


@dataclass(frozen=True)
class AblationHeadScorer:
    method: str  # ships_subspace | ships_kl | reference
    eps: float = 1e-5
    subspace_rank: int = 1
    rerun: str = "all_positions"  # or last_position (hsr_plugin.frozen_context)
    stop: AdaptiveStop | None = None  # head_prompts: adaptive
    screen: int | None = None  # head_rerun: screened: how many heads are verified exactly

    def units(self, block: AttentionBlock) -> int:
        return block.num_kv_heads if self.method == "reference" else block.num_heads

    def score(self, ctx, samples, cost) -> list[HeadScore]:
        return score_heads(
            ctx.model, ctx.blocks, samples, self.method, self.eps, self.subspace_rank,
            ctx.batch_size, ctx.pad_id, hooks=ctx.hooks, device=ctx.device,
            memory_budget=ctx.memory_budget, cost=cost, collective=ctx.collective,
            rerun=self.rerun, stop=self.stop, screen=self.screen,
        )  # fmt: skip


@dataclass(frozen=True)
class FirstOrderHeadScorer:
    method: str = "attribution"
    # carried through unchanged for `score_heads`, which the first-order path does not read
    eps: float = 1e-5
    subspace_rank: int = 1

    def units(self, block: AttentionBlock) -> int:
        return block.num_heads

    def score(self, ctx, samples, cost) -> list[HeadScore]:
        return score_heads(
            ctx.model, ctx.blocks, samples, "attribution", self.eps, self.subspace_rank,
            ctx.batch_size, ctx.pad_id, hooks=ctx.hooks, device=ctx.device,
            memory_budget=ctx.memory_budget, cost=cost, collective=ctx.collective,
        )  # fmt: skip


def head_scorer(
    head_score: str,
    eps: float,
    subspace_rank: int,
    rerun: str = "all_positions",
    stop: AdaptiveStop | None = None,
    screen: int | None = None,
) -> HeadScorer:
    """The scorer for a `head_score` setting (`rerun`: what an ablating score re-runs; `stop`:
    when it may stop before the last prompt; `screen`: with `rerun="screened"`, how many heads
    the exact re-run verifies)."""
    if head_score == "attribution":
        return FirstOrderHeadScorer(eps=eps, subspace_rank=subspace_rank)
    return AblationHeadScorer(head_score, eps, subspace_rank, rerun, stop, screen)
