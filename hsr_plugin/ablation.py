"""Head ablation by hooks: scale one head's query and its per-head attention output by eps.

Exact mode (GQA-safe): a forward hook scales the head's rows of the q_proj output, and a forward
pre-hook scales the head's columns of the o_proj input (the per-head attention output). Shared
K/V are never touched, so the other heads of the KV group are unchanged.
Reference mode (the authors' code): the unit is the KV group g; q rows of head g, k/v rows of
group g and o_proj input columns of head g are scaled, so under GQA the whole group is hit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

from torch.utils.hooks import RemovableHandle

from hsr_plugin.architecture import AttentionBlock

__all__ = ["AblationMode", "ablate_head", "ablation_units"]

AblationMode = Literal["exact", "reference"]


def ablation_units(block: AttentionBlock, mode: AblationMode) -> list[tuple[int, int]]:
    """(head, kv_group) pairs that get one score each: every head, or every KV group (reference)."""
    if mode == "reference":
        return [(g, g) for g in range(block.num_kv_heads)]
    return [(h, block.kv_group(h)) for h in range(block.num_heads)]


def _scale_output(lo: int, hi: int, eps: float) -> Callable:
    def hook(_module, _args, output):
        output = output.clone()
        output[..., lo:hi] *= eps
        return output

    return hook


def _scale_input(lo: int, hi: int, eps: float) -> Callable:
    def hook(_module, args):
        x = args[0].clone()
        x[..., lo:hi] *= eps
        return (x, *args[1:])

    return hook


@contextmanager
def ablate_head(
    block: AttentionBlock,
    head: int,
    eps: float = 1e-5,
    mode: AblationMode = "exact",
) -> Iterator[list[RemovableHandle]]:
    """Ablate `head` of `block` while the context is open (plain torch hooks, always removed)."""
    if not 0 <= head < block.num_heads:
        raise ValueError(f"head {head} is outside [0, {block.num_heads}) for {block.name}")
    d = block.head_dim
    q_lo, q_hi = head * d, (head + 1) * d
    handles = [
        block.projection("q").register_forward_hook(_scale_output(q_lo, q_hi, eps)),
        block.projection("o").register_forward_pre_hook(_scale_input(q_lo, q_hi, eps)),
    ]
    if mode == "reference":
        if head >= block.num_kv_heads:
            raise ValueError(f"reference ablation scores KV groups: {head} >= {block.num_kv_heads}")
        g_lo, g_hi = head * d, (head + 1) * d
        handles.append(block.projection("k").register_forward_hook(_scale_output(g_lo, g_hi, eps)))
        handles.append(block.projection("v").register_forward_hook(_scale_output(g_lo, g_hi, eps)))
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
