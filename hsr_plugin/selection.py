"""Neuron-level selection (HSR, Li et al., ACL 2025 Findings): pure functions over tensors.

Candidates per matrix, ranked over the whole matrix:
    S = (top_q(I_s) ∩ top_pmax(I_u)) \\ top_p(I_u)
A fused projection (Phi-3's [q; k; v] qkv_proj) is ranked as the matrices it stacks, each row
block on its own, so that it selects what separate q, k and v projections would.
Restore set: R = S ∩ head slices ∩ pruned positions, where pruned = (w == 0) & (dense != 0) is
read off the pruned model, never recomputed.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "top_fraction_count",
    "top_fraction_mask",
    "candidate_mask",
    "stacked_candidate_mask",
    "pruned_mask",
    "tensor_restore_mask",
    "tensor_with_restored",
    "nm_compatible_mask",
    "restore_gains",
    "benign_penalized_gains",
]


def top_fraction_count(numel: int, fraction: float) -> int:
    """k = floor(fraction * numel + 1e-9): fraction 0 keeps none, 1 keeps all."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return min(numel, math.floor(fraction * numel + 1e-9))


def top_fraction_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top `fraction` of elements of `scores`, over the whole tensor.

    Ties are broken by flat index (lower index first), so repeated calls give the same mask.
    """
    if not torch.isfinite(scores).all():
        raise ValueError("importance scores contain NaN or inf: check the calibration statistics")
    k = top_fraction_count(scores.numel(), fraction)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        order = torch.argsort(scores.reshape(-1).double(), descending=True, stable=True)
        mask[order[:k]] = True
    return mask.reshape(scores.shape)


def candidate_mask(
    safety_scores: torch.Tensor,
    utility_scores: torch.Tensor,
    safety_top: float,
    utility_top: float,
    utility_max: float,
) -> torch.Tensor:
    """S = (top_q(I_s) ∩ top_pmax(I_u)) minus top_p(I_u)."""
    if safety_scores.shape != utility_scores.shape:
        raise ValueError(
            f"safety scores {tuple(safety_scores.shape)} and utility scores "
            f"{tuple(utility_scores.shape)} must have the same shape"
        )
    if not 0.0 < safety_top <= 1.0:
        raise ValueError(f"safety_top (q) must lie in (0, 1], got {safety_top}")
    if not 0.0 <= utility_top <= utility_max <= 1.0:
        raise ValueError(
            f"need 0 <= utility_top (p) <= utility_max (p_max) <= 1, got p={utility_top}, "
            f"p_max={utility_max}"
        )
    safety = top_fraction_mask(safety_scores, safety_top)
    within_max = top_fraction_mask(utility_scores, utility_max)
    utility_critical = top_fraction_mask(utility_scores, utility_top)
    return safety & within_max & ~utility_critical


def stacked_candidate_mask(
    safety_scores: torch.Tensor,
    utility_scores: torch.Tensor,
    safety_top: float,
    utility_top: float,
    utility_max: float,
    row_blocks: tuple[tuple[int, int], ...] = (),
) -> torch.Tensor:
    """`candidate_mask` on each [start, end) row block of a stacked matrix (the whole matrix
    when `row_blocks` is empty); the blocks must tile the rows."""
    if not row_blocks:
        return candidate_mask(safety_scores, utility_scores, safety_top, utility_top, utility_max)
    starts = [start for start, _ in row_blocks]
    ends = [end for _, end in row_blocks]
    if starts[0] != 0 or ends[-1] != safety_scores.shape[0] or starts[1:] != ends[:-1]:
        raise ValueError(f"row blocks {row_blocks} do not tile {safety_scores.shape[0]} rows")
    return torch.cat(
        [
            candidate_mask(
                safety_scores[start:end],
                utility_scores[start:end],
                safety_top,
                utility_top,
                utility_max,
            )  # fmt: skip
            for start, end in row_blocks
        ]
    )


def pruned_mask(pruned_weight: torch.Tensor, dense_weight: torch.Tensor) -> torch.Tensor:
    """Positions that pruning zeroed: zero now, nonzero in the dense model."""
    if pruned_weight.shape != dense_weight.shape:
        raise ValueError(
            f"pruned weight {tuple(pruned_weight.shape)} and dense weight "
            f"{tuple(dense_weight.shape)} differ in shape"
        )
    return (pruned_weight == 0) & (dense_weight.to(pruned_weight.device) != 0)


def tensor_restore_mask(
    candidates: torch.Tensor, head_slices: torch.Tensor, pruned: torch.Tensor
) -> torch.Tensor:
    if not candidates.shape == head_slices.shape == pruned.shape:
        raise ValueError(
            f"mask shapes differ: candidates {tuple(candidates.shape)}, slices "
            f"{tuple(head_slices.shape)}, "
            f"pruned {tuple(pruned.shape)}"
        )
    return candidates & head_slices & pruned


def tensor_with_restored(
    pruned_weight: torch.Tensor, dense_weight: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """A new tensor: dense values on `mask`, the pruned weight's values elsewhere (its dtype)."""
    if not pruned_weight.shape == dense_weight.shape == mask.shape:
        raise ValueError(
            f"shapes differ: pruned {tuple(pruned_weight.shape)}, dense "
            f"{tuple(dense_weight.shape)}, mask {tuple(mask.shape)}"
        )
    dense = dense_weight.to(device=pruned_weight.device, dtype=pruned_weight.dtype)
    return torch.where(mask.to(pruned_weight.device), dense, pruned_weight)


def nm_compatible_mask(
    restore: torch.Tensor,
    pruned_weight: torch.Tensor,
    n: int,
    m: int,
    priority: torch.Tensor | None = None,
) -> torch.Tensor:
    """Drop restorations that would put more than n nonzeros into a group of m consecutive inputs.

    Within a group, restorations are kept greedily by `priority` (higher first, ties by index).
    """
    if not 0 < n <= m:
        raise ValueError(f"N:M pattern needs 0 < N <= M, got {n}:{m}")
    rows, cols = pruned_weight.shape
    if cols % m:
        raise ValueError(f"in_features {cols} is not a multiple of M={m}")
    if restore.shape != pruned_weight.shape:
        raise ValueError("restore mask and weight differ in shape")
    groups = restore.reshape(rows, cols // m, m)
    room = (n - (pruned_weight != 0).reshape(rows, cols // m, m).sum(-1)).clamp(min=0)
    prio = (
        priority if priority is not None else torch.zeros_like(pruned_weight, dtype=torch.float32)
    )
    prio = prio.reshape(rows, cols // m, m).double()
    # rank restorations inside each group: candidates first, by priority, then by position
    key = torch.where(groups, prio, torch.full_like(prio, -math.inf))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(m).expand_as(order).contiguous())
    keep = groups & (rank < room.unsqueeze(-1))
    return keep.reshape(rows, cols)


def restore_gains(
    dense_weight: torch.Tensor, grad_safety: torch.Tensor, grad_utility: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(safety gain, utility harm) of restoring each pruned weight, to first order.

    Restoring moves a pruned weight from 0 to its dense value w, so the safety loss changes by
    about g_s * w: the gain is -g_s * w (positive: the refusal NLL drops), and the utility loss
    by g_u * w (positive: harm). Only meaningful at pruned positions.
    """
    if not dense_weight.shape == grad_safety.shape == grad_utility.shape:
        raise ValueError(
            f"shapes differ: dense {tuple(dense_weight.shape)}, safety gradient "
            f"{tuple(grad_safety.shape)}, utility gradient {tuple(grad_utility.shape)}"
        )
    dense = dense_weight.double()
    return -(grad_safety.double() * dense), grad_utility.double() * dense


def benign_penalized_gains(
    gain: torch.Tensor, dense_weight: torch.Tensor, grad_benign: torch.Tensor, weight: float
) -> torch.Tensor:
    """The safety gain less `weight` times the gain that restoring each weight brings to the
    refusal NLL of benign requests worded like harmful ones (-g_b * w, to first order).

    A weight that makes every request likelier to be refused gains about as much on the benign
    look-alikes as on the harmful requests and nets about zero; one that separates the two
    keeps its gain. Restoring on the net gain stops buying refusals with over-refusal.
    """
    if not gain.shape == dense_weight.shape == grad_benign.shape:
        raise ValueError(
            f"shapes differ: gain {tuple(gain.shape)}, dense {tuple(dense_weight.shape)}, "
            f"benign gradient {tuple(grad_benign.shape)}"
        )
    benign_gain = -(grad_benign.double() * dense_weight.double())
    return gain.double() - weight * benign_gain
