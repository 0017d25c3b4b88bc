"""Write dense values back at the selected pruned positions, offload-safely.

Per matrix: R = candidates ∩ head slices ∩ pruned, with pruned = (w == 0) & (dense != 0) read
off the pruned model as it is now. Everything off R stays bit-identical. A budget caps R over all
matrices together, keeping the restorations with the highest priority (safety importance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from compressed_tensors.utils import align_module_device, update_offload_parameter
from torch import nn

from hsr_plugin.selection import (
    benign_penalized_gains,
    nm_compatible_mask,
    pruned_mask,
    restore_gains,
    tensor_restore_mask,
    tensor_with_restored,
)

__all__ = [
    "RestoreStats",
    "restore_module",
    "budget_masks",
    "count_pruned",
    "parse_nm",
    "module_restore_mask",
    "restore_gain_mask",
]


@dataclass(frozen=True)
class RestoreStats:
    module: str
    restored: int
    pruned_in_slice: int
    candidates: int
    pruned: int

    def as_report(self) -> dict:
        row = asdict(self)
        row.pop("pruned")
        return row


def parse_nm(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"preserve_nm must look like '2:4', got {pattern!r}") from None
    if not 0 < n <= m:
        raise ValueError(f"preserve_nm {pattern!r}: need 0 < N <= M")
    return n, m


@torch.no_grad()
def count_pruned(module: nn.Linear, dense_weight: torch.Tensor) -> int:
    """How many weights pruning zeroed in `module`: zero now, nonzero in the dense model."""
    with align_module_device(module):
        return int(pruned_mask(module.weight.detach(), dense_weight).sum())


@torch.no_grad()
def module_restore_mask(
    name: str,
    module: nn.Linear,
    dense_weight: torch.Tensor,
    candidates: torch.Tensor,
    head_slices: torch.Tensor,
    preserve_nm: tuple[int, int] | None = None,
    priority: torch.Tensor | None = None,
) -> tuple[torch.Tensor, RestoreStats]:
    """R for one matrix (a bool mask on the CPU) and its counts; the weight is not touched."""
    with align_module_device(module):
        current = module.weight.detach()
        pruned = pruned_mask(current, dense_weight.to(current.device))
        slices = head_slices.to(current.device)
        candidates = candidates.to(current.device)
        mask = tensor_restore_mask(candidates, slices, pruned)
        if preserve_nm is not None:
            mask = nm_compatible_mask(mask, current, *preserve_nm, priority=priority)
        stats = RestoreStats(
            name,
            int(mask.sum()),
            int((pruned & slices).sum()),
            int((candidates & slices).sum()),
            int(pruned.sum()),
        )
    return mask.cpu(), stats


@torch.no_grad()
def restore_gain_mask(
    name: str,
    module: nn.Linear,
    dense_weight: torch.Tensor,
    slices: torch.Tensor,
    grad_safety: torch.Tensor,
    grad_utility: torch.Tensor,
    utility_tolerance: float = 0.0,
    preserve_nm: tuple[int, int] | None = None,
    grad_benign: torch.Tensor | None = None,
    benign_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, RestoreStats]:
    """`restore_gain` for one matrix of the pruned model: (R, safety gain, counts).

    Candidates: pruned weights inside the slices whose restoration lowers the safety loss
    (gain > 0) and raises the utility loss by at most `utility_tolerance`, to first order.
    With `grad_benign` (the refusal NLL's gradient on benign look-alike requests), a candidate
    must also have a positive net gain, less `benign_weight` times what restoring brings to
    refusing those, and the net gain ranks it.
    """
    with align_module_device(module):
        current = module.weight.detach()
        dense = dense_weight.to(current.device)
        pruned = pruned_mask(current, dense)
        inside = slices.to(current.device)
        gain, harm = restore_gains(
            dense, grad_safety.to(current.device), grad_utility.to(current.device)
        )
        # a candidate must lower the refusal NLL itself: a net gain alone would also take weights
        # that make harmful requests less refused, as long as benign ones lose more
        helps_safety = gain > 0
        if grad_benign is not None:
            gain = benign_penalized_gains(
                gain, dense, grad_benign.to(current.device), benign_weight
            )
        candidates = pruned & inside & helps_safety & (gain > 0) & (harm <= utility_tolerance)
        mask = candidates
        if preserve_nm is not None:
            mask = nm_compatible_mask(mask, current, *preserve_nm, priority=gain)
        stats = RestoreStats(
            name,
            int(mask.sum()),
            int((pruned & inside).sum()),
            int(candidates.sum()),
            int(pruned.sum()),
        )
    return mask.cpu(), gain.float().cpu(), stats


@torch.no_grad()
def restore_module(module: nn.Linear, dense_weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Copy the dense values back on `mask`, offload-safely; nothing else changes."""
    if not bool(mask.any()):
        return
    with align_module_device(module):
        current = module.weight.detach()
        new_weight = tensor_with_restored(
            current, dense_weight.to(current.device), mask.to(current.device)
        )
    update_offload_parameter(module, "weight", new_weight)


def budget_masks(
    masks: dict[str, torch.Tensor], priorities: dict[str, torch.Tensor], cap: int
) -> dict[str, torch.Tensor]:
    """Keep the `cap` positions of `masks` with the highest priority, over all matrices.

    Ties go to the earlier matrix (in `masks` order), then to the lower flat index, so the
    same inputs always keep the same positions.
    """
    if cap < 0:
        raise ValueError(f"the restoration budget must be >= 0, got {cap}")
    total = sum(int(m.sum()) for m in masks.values())
    if total <= cap:
        return masks
    values, owners, flats = [], [], []
    for index, (name, mask) in enumerate(masks.items()):
        flat = mask.flatten().nonzero().flatten()
        values.append(priorities[name].flatten().cpu().double()[flat])
        owners.append(torch.full_like(flat, index))
        flats.append(flat)
    order = torch.sort(torch.cat(values), descending=True, stable=True).indices[:cap]
    owner, flat = torch.cat(owners)[order], torch.cat(flats)[order]
    kept = {}
    for index, (name, mask) in enumerate(masks.items()):
        keep = torch.zeros(mask.numel(), dtype=torch.bool)
        keep[flat[owner == index]] = True
        kept[name] = keep.reshape(mask.shape)
    return kept
