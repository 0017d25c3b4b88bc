"""Where restore_gain stops spending its budget: a measured check along its own ranking.

restore_gain ranks pruned weights by first-order gains, one weight at a time. Restored together,
tens of thousands of them move the model further than their gains add up to: on a real model
(organism-qwen, Qwen2.5-Coder-0.5B-Instruct) the recommended recipe's 170k restorations made
benign requests worded like harmful ones refused far more often than the dense model refused
them, and a first-order penalty on those refusals did not stop it. So, with
`benign_stop_margin`, restore_gain restores its ranking in steps and measures after each one the
mean refusal NLL of the benign look-alike requests (`benign_data`) on the model as it is then.
It keeps the longest prefix of the ranking whose NLL stays at or above the dense model's less
the margin: benign requests are not made more refusable than the dense model made them.

- `mean_response_nll`: the measurement (one forward pass per batch, no gradients);
- `longest_holding_prefix`: the search along the ranking, pure, testable with any measure.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from llmcompressor.modifiers.utils.hooks import HooksMixin
from torch import nn

from hsr_plugin.architecture import is_multimodal
from hsr_plugin.calibration import CalibrationSample, prompt_batches
from hsr_plugin.errors import InvalidInputError

__all__ = [
    "STOP_REFINEMENTS",
    "STOP_STEPS",
    "StopProbe",
    "longest_holding_prefix",
    "mean_response_nll",
]

# equal steps along the ranking before the first crossing, then halvings of the step that
# crossed: 8 + 3 measurements at most, the kept count within 1/64 of the budget
STOP_STEPS = 8
STOP_REFINEMENTS = 3


@torch.no_grad()
def mean_response_nll(
    model: nn.Module,
    samples: list[CalibrationSample],
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> float:
    """The mean over `samples` of each one's mean response-token NLL: the loss whose gradient
    restore_gain ranks by, measured. Samples without response tokens are left out. Every other
    modifier's hooks are off during these passes.

    Batches are left-padded, so every response ends its row: where the model takes
    `logits_to_keep` (transformers' causal LMs do), only the positions from the earliest
    response onwards go through the output head, which on a large vocabulary is most of a
    pass's work."""
    total, counted = 0.0, 0
    positions = not is_multimodal(model)
    trims = "logits_to_keep" in inspect.signature(model.forward).parameters
    with HooksMixin.disable_hooks():
        for batch in prompt_batches(samples, batch_size, pad_id, positions, full=True):
            labels = batch.pop("labels").to(device)
            inputs = {k: v.to(device) for k, v in batch.items()}
            labelled = (labels != -100).any(dim=0).nonzero()
            if len(labelled) == 0:
                continue
            # logits at t predict the token at t + 1: keep from the one before the first label
            width = labels.shape[1]
            keep = min(width, width - int(labelled[0]) + 1) if trims else width
            if trims:
                inputs["logits_to_keep"] = keep
            logits = model(**inputs, use_cache=False).logits[:, -keep:]
            targets = labels[:, width - keep + 1 :]
            nll = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )
            tokens = (targets != -100).sum(dim=1)
            has = tokens > 0
            total += float((nll.sum(dim=1)[has] / tokens[has]).sum())
            counted += int(has.sum())
    if counted == 0:
        raise InvalidInputError("benign_data: no sample has response tokens to measure")
    return total / counted


@dataclass(frozen=True)
class StopProbe:
    """One measurement along the ranking: with its first `restored` positions restored, the
    measured value (the benign look-alike refusal NLL)."""

    restored: int
    value: float

    def as_report(self) -> dict:
        return {"restored": self.restored, "benign_refusal_nll": round(self.value, 6)}


def longest_holding_prefix(
    total: int,
    measure: Callable[[int], float],
    floor: float,
    steps: int = STOP_STEPS,
    refinements: int = STOP_REFINEMENTS,
) -> tuple[int, list[StopProbe]]:
    """The longest prefix of a ranking of `total` positions, found by measuring, over which
    `measure(k)` (the model with its first k positions restored) stays >= `floor`; and every
    measurement made, in order.

    It measures k = 0 first (what the restoration starts from; recorded, never a reason to stop),
    then `steps` equal steps up to `total`, and stops at the first that falls below `floor`. The
    step that fell is then halved `refinements` times. A prefix that holds past one that fell is
    not looked for: the first crossing ends the restoration.
    """
    if total < 0 or steps < 1 or refinements < 0:
        raise ValueError(f"total={total}, steps={steps}, refinements={refinements}")
    probes = [StopProbe(0, measure(0))]
    if total == 0:
        return 0, probes
    held, fell = 0, None
    grid = sorted({max(1, round(total * i / steps)) for i in range(1, steps + 1)})
    for k in grid:
        value = measure(k)
        probes.append(StopProbe(k, value))
        if value < floor:
            fell = k
            break
        held = k
    if fell is None:
        return held, probes
    for _ in range(refinements):
        if fell - held <= 1:
            break
        k = (held + fell) // 2
        value = measure(k)
        probes.append(StopProbe(k, value))
        if value < floor:
            fell = k
        else:
            held = k
    return held, probes
