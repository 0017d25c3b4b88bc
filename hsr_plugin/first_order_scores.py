"""First-order scores (attribution patching): the change of L, the negative log-likelihood of
the refusal responses, when a unit's slice a_u of a Linear layer's input is zeroed, estimated as
<dL/da_u, 0 - a_u> summed over the positions of each batch (positions that cannot reach a
response token have a zero gradient). One forward and one backward pass per batch over the safety
conversations, whatever the number of units. Positive means zeroing the unit raises the refusal
loss.

`first_order_unit_scores` scores any units (the heads at o_proj's input, the MLP channels at
down_proj's); `first_order_head_scores` is `head_score: attribution`.
"""

from __future__ import annotations

import torch
from llmcompressor.modifiers.utils.hooks import HooksMixin
from tqdm import tqdm

from hsr_plugin.architecture import AttentionBlock, is_multimodal
from hsr_plugin.calibration import CalibrationSample, batch_to_device, prompt_batches
from hsr_plugin.distributed import Collective, balanced_shares
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.score_records import AttributionCost, HeadScore

__all__ = ["first_order_head_scores", "first_order_unit_scores"]


def first_order_head_scores(
    model,
    blocks: list[AttentionBlock],
    samples,
    batch_size,
    pad_id,
    device,
    owner,
    progress,
    cost,
    collective=None,
) -> list[HeadScore]:
    sites = {}
    for b in blocks:
        module, band = b.site("output")
        sites[b.layer] = (module, band.units, band.width)
    totals = first_order_unit_scores(
        model, sites, samples, batch_size, pad_id, device, owner, progress, cost, "head scores",
        collective,
    )  # fmt: skip
    return [
        HeadScore(b.layer, h, b.kv_group(h), float(totals[b.layer][h]))
        for b in blocks
        for h in range(b.num_heads)
    ]


def first_order_unit_scores(
    model: torch.nn.Module,
    sites: dict,
    samples: list[CalibrationSample],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    owner: HooksMixin,
    progress: bool = True,
    cost: AttributionCost | None = None,
    what: str = "unit scores",
    collective: Collective | None = None,
) -> dict:
    """Attribution patching at the inputs of some Linear layers: one forward and one backward
    pass per batch.

    `sites` maps a key to (module, units, width): the module's input splits into `units`
    consecutive slices of `width` features (the heads at o_proj, the channels at down_proj).
    Returns, per key, a float64 tensor of <dL/da_u, 0 - a_u> per unit, summed over positions.
    With `collective`, each rank runs its share of the batches; every batch's contribution is
    gathered and summed in batch order, as a single process sums them (bit-identical).
    """
    cost = cost if cost is not None else AttributionCost()
    totals = {key: torch.zeros(units, dtype=torch.float64) for key, (_, units, _) in sites.items()}
    activations: dict = {}
    probes: dict = {}

    def make(key):
        def hook(_module, args):
            x = args[0]
            # A zero tensor that requires grad, added to the activation: its gradient is dL/da,
            # and no parameter of the user's model ever requires grad or receives a .grad.
            probe = torch.zeros_like(x, requires_grad=True)
            activations[key], probes[key] = x.detach(), probe
            return (x + probe, *args[1:])

        return hook

    handles = {
        owner.register_hook(module, make(key), "forward_pre")
        for key, (module, _, _) in sites.items()
    }
    positions = not is_multimodal(model)
    for batch in prompt_batches(samples, batch_size, pad_id, positions):
        cost.unit += batch["input_ids"].numel()  # the intact pass over the prompts: the unit
    batches = list(prompt_batches(samples, batch_size, pad_id, positions, full=True))
    keys = list(sites)

    def contribution(batch) -> tuple[int, dict] | None:
        """(response tokens counted, per key the per-unit change) of one batch."""
        batch = batch_to_device(batch, device)
        labels = batch.pop("labels")
        rows, width = labels.shape
        counted = int((labels[:, 1:] != -100).sum())
        if counted == 0:
            return None
        with HooksMixin.disable_hooks(keep=handles), torch.enable_grad():
            out = model(**batch, labels=labels, use_cache=False)
            loss = out.loss * counted  # the summed NLL of the batch's response tokens
            if not torch.isfinite(loss):
                raise InvalidInputError(
                    f"HSR {what}: the response NLL is not finite; check the calibration data"
                )
            grads = torch.autograd.grad(loss, [probes[k] for k in keys])
        changes = {}
        for key, grad in zip(keys, grads, strict=True):
            _, units, unit_width = sites[key]
            change = -(grad.float() * activations[key].float())
            changes[key] = (
                change.reshape(rows, width, units, unit_width).sum(dim=(0, 1, 3)).double().cpu()
            )
        activations.clear()
        probes.clear()
        return counted, changes

    def run(indices: list[int], show: bool) -> dict[int, tuple[int, dict] | None]:
        return {
            i: contribution(batches[i])
            for i in tqdm(indices, desc=f"HSR {what} (first order)", disable=not show)
        }

    try:
        if collective is None:
            parts = run(list(range(len(batches))), progress)
        else:
            costs = [batch["input_ids"].numel() for batch in batches]
            share = balanced_shares(costs, collective.world_size)[collective.rank]
            parts = {}
            for gathered in collective.gather(
                f"{what} (first order)", lambda: run(share, progress and collective.rank == 0)
            ):
                parts.update(gathered)
    finally:
        owner.remove_hooks(handles)
    seen = 0
    for index in sorted(parts):  # batch order: the order a single process adds them in
        if parts[index] is None:
            continue
        counted, changes = parts[index]
        seen += counted
        for key in keys:
            totals[key] += changes[key]
        rows, width = batches[index]["labels"].shape
        cost.work += 2 * rows * width  # forward + backward over the whole conversations
    if seen == 0:
        raise InvalidInputError(f"HSR {what}: no response token in the calibration data")
    return totals
