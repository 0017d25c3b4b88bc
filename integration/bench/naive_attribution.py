"""The naive head attribution loop: one full forward pass of the whole model per head.

It is what `hsr_plugin.attribution.score_heads` must equal (scores within float tolerance,
identical rankings), kept here as the reference for the tests and the cost baseline for the
benchmark. It is not a user option.
"""

from __future__ import annotations

import torch

from hsr_plugin.ablation import ablate_head, ablation_units
from hsr_plugin.exact_head_scores import last_token_outputs
from hsr_plugin.head_score_math import last_token_kl, principal_angle_score, reference_angle_score
from hsr_plugin.score_records import HeadScore

__all__ = ["naive_head_scores"]


def naive_head_scores(
    model: torch.nn.Module,
    blocks,
    samples,
    method: str = "ships_subspace",
    eps: float = 1e-5,
    subspace_rank: int = 1,
    batch_size: int = 8,
    pad_id: int = 0,
) -> list[HeadScore]:
    """(heads + 1) full passes over the safety prompts: the intact one, then one per head."""
    mode = "reference" if method == "reference" else "exact"
    dense = last_token_outputs(model, samples, batch_size, pad_id)
    scores = []
    for block in blocks:
        for head, group in ablation_units(block, mode):
            with ablate_head(block, head, eps, mode):
                ablated = last_token_outputs(model, samples, batch_size, pad_id)
            if method == "ships_kl":
                value = float(last_token_kl(dense.logits, ablated.logits).mean())
            elif method == "ships_subspace":
                value = principal_angle_score(dense.states, ablated.states, subspace_rank)
            else:
                value = reference_angle_score(dense.states, ablated.states)
            scores.append(HeadScore(block.layer, head, group, value))
    return scores
