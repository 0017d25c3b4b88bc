"""Weight importance of the q/k/v/o matrices of selected layers, over response tokens only.

Wanda and SparseGPT need layer-input statistics, gathered by forward pre-hooks that feed the
accumulators of `hsr_plugin.importance` with the response-token mask of the current sample. The
hooks go through llm-compressor's `HooksMixin` and run inside `disable_hooks(keep=...)`, so no
other modifier's hooks see HSR's passes.
SNIP needs gradients of the response NLL with respect to the weights of the selected layers
only. They come from `torch.autograd.grad` on zero probes added to those layers' outputs:
dL/dW = sum over tokens of (dL/dy)^T x, with x the layer input the same hook records. So the
user's parameters never get `requires_grad` or a `.grad`, and offloaded weights (whose onloaded
copy is not the parameter) work the same. Samples run one at a time (batch 1, no padding), so
every token mask lines up with the layer inputs.
Everything runs on the execution device; statistics accumulate there in float32, or on the CPU
with `stats_device="cpu"`. Under torchrun (a `Collective`), each rank runs its share of the
samples and the sums and counts are all-reduced (`hsr_plugin.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Literal

import torch
from compressed_tensors.utils import align_module_device
from llmcompressor.modifiers.utils.hooks import HooksMixin
from torch import nn
from tqdm import tqdm

from hsr_plugin.architecture import is_multimodal
from hsr_plugin.calibration import CalibrationSample, prompt_batches
from hsr_plugin.distributed import Collective, balanced_shares, contiguous_share
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.importance import (
    GradientSaliencyAccumulator,
    HessianAccumulator,
    InputNormAccumulator,
    sparsegpt_scores,
    wanda_scores,
)
from hsr_plugin.placement import execution_device

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = [
    "MatrixStatistics",
    "NeuronScore",
    "collect_statistics",
    "for_each_weight_gradient",
    "importance_scores",
    "mean_weight_gradients",
]

NeuronScore = Literal["wanda", "sparsegpt", "snip"]
Accumulator = InputNormAccumulator | HessianAccumulator | GradientSaliencyAccumulator


class MatrixStatistics(dict):
    """module name -> accumulator, for one calibration set."""


class _CurrentSample:
    """The response-token mask of the sample being run, read by the statistics hooks, and the
    modules that have seen it: once all have, the rest of the forward pass is not needed."""

    def __init__(self) -> None:
        self.response_mask: torch.Tensor | None = None
        self.seen: set[str] = set()


class _EnoughSeen(Exception):
    """Raised by the last statistics hook of a sample to skip the layers after it."""


@contextmanager
def _input_hooks(
    modules: dict[str, nn.Linear],
    stats: MatrixStatistics,
    current: _CurrentSample,
    owner: HooksMixin,
) -> Iterator[None]:
    def make(name: str):
        def hook(_module, args):
            stats[name].update(args[0], current.response_mask)
            current.seen.add(name)
            if len(current.seen) == len(modules):
                raise _EnoughSeen

        return hook

    handles = {
        owner.register_hook(module, make(name), "forward_pre") for name, module in modules.items()
    }
    try:
        with HooksMixin.disable_hooks(keep=handles):
            yield
    finally:
        owner.remove_hooks(handles)


def collect_statistics(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    samples: list[CalibrationSample],
    method: NeuronScore,
    desc: str = "HSR neuron statistics",
    progress: bool = True,
    hooks: HooksMixin | None = None,
    device: torch.device | None = None,
    stats_device: torch.device | str | None = None,
    batch_size: int = 1,
    pad_id: int = 0,
    collective: Collective | None = None,
) -> MatrixStatistics:
    """Per-matrix statistics of `modules` over the response tokens of `samples`.

    `device`: where inputs go (the model's execution device by default); `stats_device`: where
    statistics accumulate (`device` by default). `hooks` owns the hooks (the HSRModifier; a bare
    `HooksMixin` by default). Wanda and SparseGPT statistics run `batch_size` conversations per
    pass, left-padded (pads are never response tokens, so they never count); SNIP runs one.
    With `collective`, this rank runs its share of the batches and the statistics are summed
    over ranks.
    """
    if not samples:
        raise InvalidInputError("neuron scoring needs at least one calibration sample")
    device = device if device is not None else execution_device(model)
    stats_device = stats_device if stats_device is not None else device
    owner = hooks if hooks is not None else HooksMixin()
    progress = progress and (collective is None or collective.rank == 0)
    if method == "snip":
        stats = MatrixStatistics(
            {
                name: GradientSaliencyAccumulator(stats_device, tuple(module.weight.shape))
                for name, module in modules.items()
            }
        )
        if collective is not None:
            samples = [samples[i] for i in contiguous_share(len(samples), *_where(collective))]
        run = partial(_collect_snip, model, modules, samples, stats, desc, progress, device, owner)
    else:
        factory = InputNormAccumulator if method == "wanda" else HessianAccumulator
        stats = MatrixStatistics(
            {name: factory(module.in_features, stats_device) for name, module in modules.items()}
        )
        batches = list(
            prompt_batches(samples, batch_size, pad_id, not is_multimodal(model), full=True)
        )
        if collective is not None:
            costs = [batch["input_ids"].numel() for batch in batches]
            share = balanced_shares(costs, collective.world_size)[collective.rank]
            batches = [batches[i] for i in share]
        run = partial(
            _collect_inputs, model, modules, batches, stats, f"{desc} ({method})", progress,
            device, owner,
        )  # fmt: skip
    if collective is None:
        run()
    else:
        collective.settle(f"{desc} ({method})", run)
        collective.sum_accumulators(stats)
    require_seen(stats)
    return stats


def _where(collective: Collective) -> tuple[int, int]:
    return collective.rank, collective.world_size


def _collect_inputs(model, modules, batches, stats, desc, progress, device, owner) -> None:
    current = _CurrentSample()
    with torch.no_grad(), _input_hooks(modules, stats, current, owner):
        for batch in tqdm(batches, desc=desc, disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            current.response_mask = batch.pop("labels") != -100
            current.seen = set()
            try:
                model(**batch, use_cache=False)
            except _EnoughSeen:
                pass  # every statistic of this batch is in: the later layers would add nothing


def _collect_snip(model, modules, samples, stats, desc, progress, device, owner) -> None:
    def accumulate(name: str, module: nn.Linear, grad_weight: torch.Tensor) -> None:
        with align_module_device(module):
            stats[name].update(module.weight, grad_weight.to(module.weight.device))

    for_each_weight_gradient(
        model, modules, samples, f"{desc} (snip)", progress, device, owner, accumulate
    )


def for_each_weight_gradient(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    samples: list[CalibrationSample],
    desc: str,
    progress: bool,
    device: torch.device,
    owner: HooksMixin,
    consume: Callable[[str, nn.Linear, torch.Tensor], None],
) -> None:
    """For each sample, dL/dW of every module in `modules`, L being the mean NLL of the sample's
    response tokens; `consume(name, module, grad)` receives each gradient (float32).

    The gradients come from `torch.autograd.grad` on zero probes added to the modules' outputs,
    dL/dW = (dL/dy)^T x over the sample's tokens: no parameter gets `requires_grad` or `.grad`.
    """
    inputs_seen: dict[str, torch.Tensor] = {}
    probes: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(_module, args, output):
            inputs_seen[name] = args[0].detach()
            probe = torch.zeros_like(output, requires_grad=True)
            probes[name] = probe
            return output + probe

        return hook

    handles = {
        owner.register_hook(module, make(name), "forward") for name, module in modules.items()
    }
    try:
        for sample in tqdm(samples, desc=desc, disable=not progress):
            inputs = {k: v.to(device) for k, v in sample.model_inputs().items()}
            labels = torch.where(sample.response_mask.to(device), inputs["input_ids"], -100)
            with HooksMixin.disable_hooks(keep=handles), torch.enable_grad():
                loss = model(**inputs, labels=labels, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise InvalidInputError(
                        f"{desc}: the response NLL is not finite; check the calibration data"
                    )
                names = list(probes)
                grads = torch.autograd.grad(loss, [probes[n] for n in names])
            for name, grad_out in zip(names, grads, strict=True):
                module = modules[name]
                x = inputs_seen[name].reshape(-1, module.in_features).float()
                consume(name, module, grad_out.reshape(-1, module.out_features).float().T @ x)
            inputs_seen.clear()
            probes.clear()
    finally:
        owner.remove_hooks(handles)


def mean_weight_gradients(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    samples: list[CalibrationSample],
    desc: str,
    progress: bool = True,
    device: torch.device | None = None,
    hooks: HooksMixin | None = None,
    stats_device: torch.device | str | None = None,
    collective: Collective | None = None,
) -> dict[str, torch.Tensor]:
    """dL/dW averaged over `samples` (L: each sample's mean response-token NLL). With
    `collective`, this rank runs its share of the samples and the sums are added over ranks."""
    device = device if device is not None else execution_device(model)
    stats_device = stats_device if stats_device is not None else device
    owner = hooks if hooks is not None else HooksMixin()
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, _module: nn.Linear, grad_weight: torch.Tensor) -> None:
        grad_weight = grad_weight.to(stats_device)
        sums[name] = grad_weight if name not in sums else sums[name] + grad_weight

    if collective is None:
        for_each_weight_gradient(model, modules, samples, desc, progress, device, owner, add)
    else:
        mine = [samples[i] for i in contiguous_share(len(samples), *_where(collective))]
        collective.settle(
            desc,
            lambda: for_each_weight_gradient(
                model, modules, mine, desc, progress and collective.rank == 0, device, owner, add
            ),
        )
        for name, module in sorted(modules.items()):
            local = sums.get(name)
            if local is None:  # this rank had no sample
                local = torch.zeros(module.weight.shape, dtype=torch.float32, device=stats_device)
            sums[name] = collective.all_reduce_sum(local)
    return {name: grad / len(samples) for name, grad in sums.items()}


def require_seen(stats: MatrixStatistics) -> None:
    """Refuse statistics of a matrix that no response token reached."""
    empty = [name for name, acc in stats.items() if acc.count == 0]
    if empty:
        raise InvalidInputError(
            f"no response tokens reached {empty[0]} (and {len(empty) - 1} more): check the "
            "calibration data"
        )


def importance_scores(
    method: NeuronScore, accumulator: Accumulator, weight: torch.Tensor
) -> torch.Tensor:
    """Importance of every element of `weight`, from one matrix's statistics."""
    if method == "wanda":
        return wanda_scores(weight, accumulator.squared_norms())
    if method == "sparsegpt":
        return sparsegpt_scores(weight, accumulator.hessian())
    if method == "snip":
        return accumulator.scores().double()
    raise InvalidInputError(f"unknown neuron_score {method!r}: use wanda, sparsegpt or snip")
