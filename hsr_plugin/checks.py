"""Checks on tensors and counts shared by HSR's stages."""

from __future__ import annotations

import torch
from compressed_tensors.utils import align_module_device

from hsr_eval.language_weights import language_sparsity_counts
from hsr_plugin.errors import InvalidInputError

__all__ = ["all_finite", "language_counts", "require_finite"]


def all_finite(*tensors: torch.Tensor) -> bool:
    """No NaN or inf in any of `tensors`."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def require_finite(tensor: torch.Tensor, what: str) -> None:
    """One clear error naming the tensor, before NaN or inf reach scores or the output."""
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InvalidInputError(f"HSRModifier: the {what} has {bad} non-finite values (NaN or inf)")


@torch.no_grad()
def language_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(zeros, weights) of the language decoder's Linear layers (lm_head and vision excluded):
    the order of `hsr_eval.language_weights.language_sparsity_counts`, which counts them."""

    def weights():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                with align_module_device(module):
                    yield f"{name}.weight", module.weight

    return language_sparsity_counts(weights())
