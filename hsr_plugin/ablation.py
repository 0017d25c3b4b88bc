"""Head ablation by hooks: scale one head's query and its per-head attention output by eps.

Exact mode (GQA-safe): a forward hook scales the head's rows of the q_proj output, and a forward
pre-hook scales the head's columns of the o_proj input (the per-head attention output). Shared
K/V are never touched, so the other heads of the KV group are unchanged.
Reference mode (the authors' code): the unit is the KV group g; q rows of head g, k/v rows of
group g and o_proj input columns of head g are scaled, so under GQA the whole group is hit.

The hooks are registered through llm-compressor's `HooksMixin` and the ablated pass runs inside
`HooksMixin.disable_hooks(keep=<these hooks>)`: every other modifier's hooks (a SparseGPT
Hessian hook, say) stay silent while HSR's own run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from llmcompressor.modifiers.utils.hooks import HooksMixin
from torch.utils.hooks import RemovableHandle

from hsr_plugin.architecture import AttentionBlock

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = [
    "AblationMode",
    "ablate_head",
    "ablate_heads_per_position",
    "ablate_heads_per_replica",
    "ablation_units",
]

AblationMode = Literal["exact", "reference"]


def ablation_units(block: AttentionBlock, mode: AblationMode) -> list[tuple[int, int]]:
    """(head, kv_group) pairs that get one score each: every head, or every KV group (reference)."""
    if mode == "reference":
        return [(g, g) for g in range(block.num_kv_heads)]
    return [(h, block.kv_group(h)) for h in range(block.num_heads)]


# where one replica's head is scaled: the leading index (its rows, or its position) and the
# head's feature columns
Span = tuple[tuple, slice]


def _scale_output(spans: list[Span], eps: float) -> Callable:
    def hook(_module, _args, output):
        output = output.clone()
        for lead, cols in spans:
            output[(*lead, Ellipsis, cols)] *= eps
        return output

    return hook


def _scale_input(spans: list[Span], eps: float) -> Callable:
    def hook(_module, args):
        x = args[0].clone()
        for lead, cols in spans:
            x[(*lead, Ellipsis, cols)] *= eps
        return (x, *args[1:])

    return hook


def check_unit(block: AttentionBlock, head: int, mode: AblationMode) -> None:
    """Refuse a head outside the block (or, in reference mode, outside its KV groups)."""
    if not 0 <= head < block.num_heads:
        raise ValueError(f"head {head} is outside [0, {block.num_heads}) for {block.name}")
    if mode == "reference" and head >= block.num_kv_heads:
        raise ValueError(f"reference ablation scores KV groups: {head} >= {block.num_kv_heads}")


@contextmanager
def ablate_head(
    block: AttentionBlock,
    head: int,
    eps: float = 1e-5,
    mode: AblationMode = "exact",
    hooks: HooksMixin | None = None,
) -> Iterator[list[RemovableHandle]]:
    """Ablate `head` of `block` in every sequence of the batch while the context is open; only
    HSR's hooks run inside it.

    `hooks` owns the hooks (the HSRModifier; a bare `HooksMixin` when called on its own). They
    are always removed on exit.
    """
    with ablate_heads_per_replica(block, [head], None, eps, mode, hooks) as handles:
        yield handles


@contextmanager
def ablate_heads_per_replica(
    block: AttentionBlock,
    heads: Sequence[int],
    replica_rows: int | None,
    eps: float = 1e-5,
    mode: AblationMode = "exact",
    hooks: HooksMixin | None = None,
) -> Iterator[list[RemovableHandle]]:
    """Ablate a different head in each replica of a replicated batch.

    The batch holds len(heads) copies of one batch of `replica_rows` sequences, replica-major:
    rows [r * replica_rows, (r + 1) * replica_rows) get `heads[r]` ablated. `replica_rows=None`
    means one replica covering every row.
    """
    if replica_rows is None and len(heads) != 1:
        raise ValueError("several heads need replica_rows: one replica of the batch per head")
    leads = [
        (slice(None),)
        if replica_rows is None
        else (slice(r * replica_rows, (r + 1) * replica_rows),)
        for r in range(len(heads))
    ]
    with _ablate(block, heads, leads, eps, mode, hooks) as handles:
        yield handles


@contextmanager
def ablate_heads_per_position(
    block: AttentionBlock,
    heads: Sequence[int],
    eps: float = 1e-5,
    mode: AblationMode = "exact",
    hooks: HooksMixin | None = None,
) -> Iterator[list[RemovableHandle]]:
    """Ablate `heads[r]` at position r of every sequence, for a batch whose positions are
    replicas of one position (`hsr_plugin.frozen_context` re-runs the last prompt position so)."""
    leads = [(slice(None), r) for r in range(len(heads))]
    with _ablate(block, heads, leads, eps, mode, hooks) as handles:
        yield handles


@contextmanager
def _ablate(block, heads, leads, eps, mode, hooks) -> Iterator[list[RemovableHandle]]:
    for head in heads:
        check_unit(block, head, mode)
    owner = hooks if hooks is not None else HooksMixin()

    def spans(band):
        # in reference mode the unit is the KV group itself
        return [(lead, band.span(head, head)) for lead, head in zip(leads, heads, strict=True)]

    query, query_band = block.site("query")
    output, output_band = block.site("output")
    plan = [
        (query, "forward", _scale_output(spans(query_band), eps)),
        (output, "forward_pre", _scale_input(spans(output_band), eps)),
    ]
    if mode == "reference":  # the unit is the KV group g here: its k/v rows go too
        plan += [
            (module, "forward", _scale_output(spans(band), eps))
            for module, band in block.key_value_sites()
        ]
    handles = [owner.register_hook(module, fn, kind) for module, kind, fn in plan]
    try:
        with HooksMixin.disable_hooks(keep=set(handles)):
            yield handles
    finally:
        owner.remove_hooks(set(handles))
