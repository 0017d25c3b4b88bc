"""Weight importance on calibration data (HSR's neuron level): statistics and scores.

Accumulators collect per-matrix statistics from layer inputs over the selected (response) tokens,
in float32 on a device of the caller's choosing (the execution device, or the CPU to spare
accelerator memory for very large layers, as SparseGPT's `offload_hessians` does):
- Wanda: the per-input-feature sum of squares, one vector per matrix;
- SparseGPT: the Hessian H = 2/n * sum x x^T (the 2/n scaling of SparseGPT; any positive scale
  leaves the ranking unchanged), scored as llm-compressor's SparseGPT ranks weights;
- SNIP: |W * dL/dW| accumulated over samples.
Score matrices are built on demand, one matrix at a time, and never stored.
"""

from __future__ import annotations

import torch

__all__ = [
    "InputNormAccumulator",
    "HessianAccumulator",
    "GradientSaliencyAccumulator",
    "wanda_scores",
    "sparsegpt_scores",
]

_EMPTY = (
    "no response tokens were seen for this matrix: check the calibration data (empty responses?)"
)


def _select_tokens(
    inputs: torch.Tensor, token_mask: torch.Tensor | None, in_features: int
) -> torch.Tensor:
    if inputs.shape[-1] != in_features:
        raise ValueError(
            f"inputs have {inputs.shape[-1]} features, the matrix expects {in_features}"
        )
    flat = inputs.reshape(-1, in_features)
    if token_mask is None:
        return flat
    mask = token_mask.reshape(-1).to(device=flat.device, dtype=torch.bool)
    if mask.numel() != flat.shape[0]:
        raise ValueError(f"token mask covers {mask.numel()} tokens, inputs have {flat.shape[0]}")
    return flat[mask]


class InputNormAccumulator:
    """Per-input-feature sum of squares over selected tokens."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.in_features = in_features
        self._sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self._count = 0

    def update(self, inputs: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        x = _select_tokens(inputs.detach(), token_mask, self.in_features)
        self._sum_sq += x.to(self._sum_sq.device, torch.float32).pow(2).sum(0)
        self._count += x.shape[0]

    @property
    def count(self) -> int:
        return self._count

    def totals(self) -> tuple[torch.Tensor, int]:
        """The running sum and the token count (to combine accumulators across processes)."""
        return self._sum_sq, self._count

    def set_totals(self, total: torch.Tensor, count: int) -> None:
        self._sum_sq, self._count = total.to(self._sum_sq), count

    def squared_norms(self) -> torch.Tensor:
        if self._count == 0:
            raise ValueError(_EMPTY)
        return self._sum_sq.clone()


class HessianAccumulator:
    """H = 2/n * sum x x^T over selected tokens, as SparseGPT builds it (in x in)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.in_features = in_features
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self._count = 0

    def update(self, inputs: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        x = _select_tokens(inputs.detach(), token_mask, self.in_features)
        x = x.to(self._sum.device, torch.float32)
        self._sum += x.T @ x
        self._count += x.shape[0]

    @property
    def count(self) -> int:
        return self._count

    def totals(self) -> tuple[torch.Tensor, int]:
        """The running sum of x x^T and the token count (to combine across processes)."""
        return self._sum, self._count

    def set_totals(self, total: torch.Tensor, count: int) -> None:
        self._sum, self._count = total.to(self._sum), count

    def hessian(self) -> torch.Tensor:
        if self._count == 0:
            raise ValueError(_EMPTY)
        return self._sum * (2.0 / self._count)


class GradientSaliencyAccumulator:
    """SNIP saliency: sum over samples of |W * grad| (fp32). `shape` (the weight's) is needed
    only to combine with other processes' accumulators before this one has seen a sample."""

    def __init__(
        self, device: torch.device | str = "cpu", shape: tuple[int, ...] | None = None
    ) -> None:
        self._device = torch.device(device)
        self._shape = shape
        self._scores: torch.Tensor | None = None
        self._count = 0

    def update(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        if weight.shape != grad.shape:
            raise ValueError(
                f"weight {tuple(weight.shape)} and gradient {tuple(grad.shape)} differ in shape"
            )
        saliency = (weight.detach().float() * grad.detach().float()).abs().to(self._device)
        self._scores = saliency if self._scores is None else self._scores + saliency
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def totals(self) -> tuple[torch.Tensor, int]:
        """The running sum and the sample count (to combine accumulators across processes)."""
        if self._scores is not None:
            return self._scores, self._count
        if self._shape is None:
            raise ValueError("an empty saliency accumulator needs its weight's shape to combine")
        return torch.zeros(self._shape, dtype=torch.float32, device=self._device), 0

    def set_totals(self, total: torch.Tensor, count: int) -> None:
        self._scores, self._count = total.to(self._device, torch.float32), count

    def scores(self) -> torch.Tensor:
        if self._scores is None:
            raise ValueError(_EMPTY)
        return self._scores.clone()


def wanda_scores(weight: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """|W[r, c]| * ||X[:, c]||_2."""
    if weight.dim() != 2 or squared_norms.shape != (weight.shape[1],):
        raise ValueError(
            f"need a 2-D weight and one norm per input feature; got {tuple(weight.shape)} and "
            f"{tuple(squared_norms.shape)}"
        )
    return weight.detach().double().abs() * squared_norms.to(weight.device).double().clamp(
        min=0
    ).sqrt().unsqueeze(0)


def sparsegpt_scores(
    weight: torch.Tensor, hessian: torch.Tensor, damping: float = 0.01
) -> torch.Tensor:
    """W[r, c]^2 / U_cc^2, SparseGPT's pruning score as llm-compressor computes it.

    U is the upper Cholesky factor of the damped inverse Hessian, (H + damping * mean(diag H) I)^-1
    = U^T U; SparseGPT prunes, block by block, the weights with the lowest score (for the first
    block, before any OBS update, exactly these scores). Inputs that never fire (H_cc = 0) get
    H_cc = 1 and their weights score 0, as SparseGPT zeroes them first.
    """
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian {tuple(hessian.shape)} does not match in_features {cols}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    h = hessian.detach().to(weight.device, torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u_diag = torch.diag(torch.linalg.cholesky(inverse, upper=True))
    w = weight.detach().double().clone()
    w[:, dead] = 0.0
    return w.pow(2) / u_diag.unsqueeze(0).pow(2)
