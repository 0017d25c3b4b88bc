"""What every scoring pass of HSR needs, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hsr_plugin.architecture import AttentionBlock
from hsr_plugin.distributed import Collective

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = ["ScoringContext"]


@dataclass(frozen=True)
class ScoringContext:
    """The model and its targeted attention blocks, the execution device the passes run on,
    the owner of HSR's hooks (the HSRModifier), the batching, and where statistics live.

    `memory_budget`: bytes of activations one replicated ablation pass may use (None: a
    quarter of the accelerator's free memory, or 128 MiB on the CPU). `stats_device`: where
    importance statistics accumulate (the CPU with `offload_statistics`). `collective`: the
    ranks under torchrun, which share the scoring out (None in a single process)."""

    model: nn.Module
    blocks: list[AttentionBlock]
    device: torch.device
    hooks: HooksMixin
    batch_size: int
    pad_id: int
    memory_budget: int | None = None
    stats_device: Any = None
    collective: Collective | None = None
