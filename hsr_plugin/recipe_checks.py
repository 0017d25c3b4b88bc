"""Where HSR sits in the recipe, and which attention blocks its targets select: checked in
`on_initialize`, before any scoring."""

from __future__ import annotations

from compressed_tensors.utils import match_named_modules
from llmcompressor.core import active_session
from llmcompressor.modifiers import Modifier
from torch import nn

from hsr_plugin.architecture import AttentionBlock, find_attention_blocks
from hsr_plugin.errors import InvalidInputError, StageOrderError

__all__ = ["earlier_pruning", "is_pruning", "require_pruning_ended", "target_blocks"]


def is_pruning(modifier: Modifier) -> bool:
    """Modifiers that zero weights: Wanda and SparseGPT (SparsityModifierBase), magnitude
    pruning, and the sweep's saved pruning (PrunedWeightsModifier). ConstantPruningModifier only
    keeps existing zeros, so it is not one."""
    from llmcompressor.modifiers.pruning import MagnitudePruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    from hsr_plugin.pruned_base import PrunedWeightsModifier

    return isinstance(
        modifier, SparsityModifierBase | MagnitudePruningModifier | PrunedWeightsModifier
    )


def earlier_pruning(hsr: Modifier) -> list[Modifier]:
    """The pruning modifiers before `hsr` in the active recipe; an error if there is none, or if
    a quantization modifier comes before it."""
    from llmcompressor.modifiers.quantization.quantization.mixin import QuantizationMixin

    recipe = active_session().lifecycle.recipe
    modifiers = list(getattr(recipe, "modifiers", None) or [])
    index = next((i for i, m in enumerate(modifiers) if m is hsr), None)
    earlier = modifiers[:index] if index is not None else []
    quant = [type(m).__name__ for m in earlier if isinstance(m, QuantizationMixin)]
    if quant:
        raise InvalidInputError(
            f"HSRModifier comes after {quant[0]}: put HSR after the sparsity stage and BEFORE "
            "quantization, so that it restores dense weights before they are quantized"
        )
    pruning = [m for m in earlier if is_pruning(m)]
    if not pruning:
        found = ", ".join(type(m).__name__ for m in earlier) or "nothing"
        raise InvalidInputError(
            f"HSRModifier needs a pruning modifier before it in the recipe (found {found}). "
            "Put HSR after the sparsity stage (e.g. WandaPruningModifier or SparseGPTModifier) "
            "and before quantization."
        )
    return pruning


def target_blocks(model: nn.Module, targets: list[str], ignore: list[str]) -> list[AttentionBlock]:
    """The self-attention blocks inside the modules `targets` match, minus those `ignore`
    names (the block or one of its projections)."""
    targeted = [name for name, _ in match_named_modules(model, targets, ignore)]
    if not targeted:
        raise InvalidInputError(
            f"HSRModifier targets {targets} match no module of {type(model).__name__} "
            f"(ignore={ignore})"
        )
    blocks = find_attention_blocks(model, within=targeted)
    ignored = {name for name, _ in match_named_modules(model, ignore)} if ignore else set()
    kept = [
        b
        for b in blocks
        if b.name not in ignored and not any(name in ignored for _, name, _ in b.projections())
    ]
    if not kept:
        raise InvalidInputError(f"HSRModifier: every self-attention block is ignored by {ignore}")
    return kept


def require_pruning_ended(pruning: list[Modifier]) -> None:
    """Restoring while a pruning modifier before HSR is still running is an error."""
    unfinished = [type(m).__name__ for m in pruning if not m.ended_]
    if unfinished:
        raise StageOrderError(
            f"HSRModifier would restore weights before {unfinished[0]} has finished pruning. "
            "Put HSR after the sparsity stage and before quantization, and run oneshot with "
            "the default pipeline ('independent')."
        )
