"""Head-level safety scores (Ships, as HSR uses them) and the global ranking of heads.

Computed in float64 for stability:
- `last_token_kl`: KL(p_dense || p_ablated) of the next-token distribution, per prompt;
- `principal_angle_score`: the sum of principal angles (radians) between the leading-r right
  singular subspaces (feature space) of the stacked last-token states, intact vs ablated;
- `reference_angle_score`: the authors' code: the angle in degrees between hidden feature 0 of
  the intact and ablated states across samples (M[:, 0] vs M_A[:, 0]); no SVD.
"""

from __future__ import annotations

import math

import torch

from hsr_plugin.ranking import rank_units, select_top

__all__ = [
    "last_token_kl",
    "principal_angle_score",
    "reference_angle_score",
    "rank_heads",
    "select_top_heads",
]

HeadKey = tuple[int, int]


def last_token_kl(dense_logits: torch.Tensor, ablated_logits: torch.Tensor) -> torch.Tensor:
    if dense_logits.shape != ablated_logits.shape or dense_logits.dim() != 2:
        raise ValueError(
            f"need two (N, vocab) logit tensors of one shape, got {tuple(dense_logits.shape)} "
            f"and {tuple(ablated_logits.shape)}"
        )
    log_p = torch.log_softmax(dense_logits.double(), dim=-1)
    log_q = torch.log_softmax(ablated_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)


def _leading_subspace(states: torch.Tensor, rank: int) -> torch.Tensor:
    _, _, vh = torch.linalg.svd(states.double(), full_matrices=False)
    return vh[:rank].T  # (d, rank), orthonormal columns


def principal_angle_score(
    dense_states: torch.Tensor, ablated_states: torch.Tensor, rank: int = 1
) -> float:
    if dense_states.shape != ablated_states.shape or dense_states.dim() != 2:
        raise ValueError(
            f"need two (N, d) state tensors of one shape, got {tuple(dense_states.shape)} and "
            f"{tuple(ablated_states.shape)}"
        )
    n, d = dense_states.shape
    if not 1 <= rank <= min(n, d):
        raise ValueError(f"subspace_rank {rank} must lie in [1, min(N={n}, d={d})]")
    u1 = _leading_subspace(dense_states, rank)
    u2 = _leading_subspace(ablated_states, rank)
    cosines = torch.linalg.svdvals(u1.T @ u2).clamp(-1.0, 1.0)
    return float(torch.arccos(cosines).sum())


def reference_angle_score(dense_states: torch.Tensor, ablated_states: torch.Tensor) -> float:
    """Degrees between M[:, 0] and M_A[:, 0]; 0 when either vector is zero."""
    if dense_states.shape != ablated_states.shape or dense_states.dim() != 2:
        raise ValueError("need two (N, d) state tensors of one shape")
    a = dense_states[:, 0].double()
    b = ablated_states[:, 0].double()
    denom = a.norm() * b.norm()
    if denom == 0:
        return 0.0
    cosine = float((a @ b / denom).clamp(-1.0, 1.0))
    return math.degrees(math.acos(cosine))


def rank_heads(scores: dict[HeadKey, float]) -> list[tuple[HeadKey, float]]:
    """Heads sorted by score descending; ties by (layer, head) ascending."""
    return rank_units(scores, "head")


def select_top_heads(ranked: list[tuple[HeadKey, float]], num_heads: int) -> list[HeadKey]:
    return select_top(ranked, num_heads, "num_heads", "heads")
