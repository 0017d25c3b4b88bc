"""Head attribution (Ships) on the dense model: one score per (layer, head).

For every head, the model is run on the safety prompts (user turn + generation prompt) with that
head ablated, and compared with the intact model at the last prompt position:
- `ships_kl`: mean KL(p_dense || p_ablated) of the next-token distribution;
- `ships_subspace`: principal angles between the leading singular subspaces of the final-layer
  states (N x d) of the last prompt token, intact vs ablated;
- `reference`: the authors' code: angle (degrees) on hidden feature 0, one score per KV group.
Text-only prompts are batched with left padding; prompts with images run one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from tqdm import tqdm

from hsr_plugin.ablation import ablate_head, ablation_units
from hsr_plugin.architecture import AttentionBlock
from hsr_plugin.calibration import CalibrationSample
from hsr_plugin.head_scores import last_token_kl, principal_angle_score, reference_angle_score
from hsr_plugin.hooks import hooks_mixin

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = ["HeadScore", "HeadScoreMethod", "LastTokenOutputs", "last_token_outputs", "score_heads"]

HeadScoreMethod = Literal["ships_kl", "ships_subspace", "reference"]


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    kv_group: int
    score: float


@dataclass
class LastTokenOutputs:
    logits: torch.Tensor  # (N, vocab)
    states: torch.Tensor  # (N, d): final-layer hidden state


def _batches(samples: list[CalibrationSample], batch_size: int, pad_id: int, positions: bool):
    if any(s.extra for s in samples):
        for s in samples:
            yield s.prompt_inputs()
        return
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        width = max(s.prompt_length for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, width - s.prompt_length :] = s.input_ids[0, : s.prompt_length]
            mask[i, width - s.prompt_length :] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if positions:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        yield batch


@torch.no_grad()
def last_token_outputs(
    model: torch.nn.Module, samples: list[CalibrationSample], batch_size: int = 8, pad_id: int = 0
) -> LastTokenOutputs:
    """Next-token logits and final hidden state at the last prompt position, for every sample."""
    device = next(model.parameters()).device
    multimodal = hasattr(getattr(model, "config", None), "vision_config")
    logits, states = [], []
    for batch in _batches(samples, batch_size, pad_id, positions=not multimodal):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, use_cache=False, output_hidden_states=True, return_dict=True)
        logits.append(out.logits[:, -1].float().cpu())
        states.append(out.hidden_states[-1][:, -1].float().cpu())
    return LastTokenOutputs(torch.cat(logits), torch.cat(states))


def _score(
    method: HeadScoreMethod, dense: LastTokenOutputs, ablated: LastTokenOutputs, rank: int
) -> float:
    if method == "ships_kl":
        return float(last_token_kl(dense.logits, ablated.logits).mean())
    if method == "ships_subspace":
        return principal_angle_score(dense.states, ablated.states, rank)
    return reference_angle_score(dense.states, ablated.states)


def score_heads(
    model: torch.nn.Module,
    blocks: list[AttentionBlock],
    samples: list[CalibrationSample],
    method: HeadScoreMethod = "ships_subspace",
    eps: float = 1e-5,
    subspace_rank: int = 1,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
    hooks: HooksMixin | None = None,
) -> list[HeadScore]:
    """Score every head (every KV group in reference mode) of `blocks` on the safety prompts.

    Every pass runs inside `HooksMixin.disable_hooks`: the intact pass with no hooks at all,
    each ablated pass with only its own ablation hooks (owned by `hooks`, the HSRModifier).
    """
    if not samples:
        raise ValueError("head attribution needs at least one safety prompt")
    mode = "reference" if method == "reference" else "exact"
    with hooks_mixin().disable_hooks():
        dense = last_token_outputs(model, samples, batch_size, pad_id)
    _check_finite(dense, "the intact model")
    units = [
        (block, head, group) for block in blocks for head, group in ablation_units(block, mode)
    ]
    scores = []
    for block, head, group in tqdm(units, desc=f"HSR head scores ({method})", disable=not progress):
        with ablate_head(block, head, eps, mode, hooks):
            ablated = last_token_outputs(model, samples, batch_size, pad_id)
        _check_finite(ablated, f"{block.name} with head {head} ablated")
        scores.append(
            HeadScore(block.layer, head, group, _score(method, dense, ablated, subspace_rank))
        )
    return scores


def _check_finite(outputs: LastTokenOutputs, what: str) -> None:
    """NaN or inf would reach the SVD of the subspace score; say where they came from."""
    if not (torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.states).all()):
        raise ValueError(
            f"head attribution: the next-token logits or final states of {what} on the safety "
            "prompts are not finite (NaN or inf), so its head score would be too"
        )
