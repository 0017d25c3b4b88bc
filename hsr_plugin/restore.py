"""Write dense values back at the selected pruned positions, offload-safely.

Per matrix: R = candidates ∩ head slices ∩ pruned, with pruned = (w == 0) & (dense != 0) read
off the pruned model as it is now. Everything off R stays bit-identical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from compressed_tensors.utils import align_module_device, update_offload_parameter
from torch import nn

from hsr_plugin.selection import apply_restore, nm_compatible_mask, pruned_mask, restore_mask

__all__ = ["RestoreStats", "count_pruned", "restore_matrix", "parse_nm"]


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
def restore_matrix(
    name: str,
    module: nn.Linear,
    dense_weight: torch.Tensor,
    candidates: torch.Tensor,
    head_slices: torch.Tensor,
    preserve_nm: tuple[int, int] | None = None,
    priority: torch.Tensor | None = None,
) -> RestoreStats:
    with align_module_device(module):
        current = module.weight.detach()
        pruned = pruned_mask(current, dense_weight)
        mask = restore_mask(candidates.to(current.device), head_slices.to(current.device), pruned)
        if preserve_nm is not None:
            mask = nm_compatible_mask(mask, current, *preserve_nm, priority=priority)
        restored = int(mask.sum())
        stats = RestoreStats(
            name,
            restored,
            int((pruned & head_slices.to(current.device)).sum()),
            int((candidates.to(current.device) & head_slices.to(current.device)).sum()),
            int(pruned.sum()),
        )
        if restored:
            new_weight = apply_restore(current, dense_weight, mask)
    if restored:
        update_offload_parameter(module, "weight", new_weight)
    return stats
