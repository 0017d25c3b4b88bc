"""Where HSR's scoring passes run: the execution device, as llm-compressor's own pipelines do.

`oneshot` initializes every modifier before any pipeline has placed the model, so a model loaded
from a path sits on the CPU during `on_initialize` even on a GPU machine. HSR places it itself
while it scores, and puts it back before the pruning stage starts:

- already dispatched (compressed-tensors offloading, which is also what `oneshot` turns an
  accelerate device map into), or moved to an accelerator by the user: kept as it is;
- on the CPU while an accelerator exists: dispatched with compressed-tensors' `dispatch_model`,
  which keeps on the device what fits and offloads the rest; afterwards every module gets back
  its own parameter and buffer dictionaries (the very tensors it had, still on the CPU) and its
  own forward, so the model is exactly as it was;
- no accelerator: everything runs on the CPU, and HSR says so in one log line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import torch
from loguru import logger
from torch import nn

__all__ = [
    "Placement",
    "accelerator_device",
    "decide_placement",
    "dispatch_state",
    "execution_device",
    "execution_placement",
]

_MISSING = object()


@dataclass(frozen=True)
class Placement:
    action: Literal["keep", "dispatch", "cpu"]
    reason: str
    accelerator: torch.device | None = None
    device: torch.device | None = None  # where inputs go, once placed


def available_device_memory() -> dict[torch.device, int]:
    """Memory per device that `dispatch_model` may fill (compressed-tensors' own query)."""
    from compressed_tensors.offload.dispatch import get_device_memory

    return get_device_memory()


def accelerator_device() -> torch.device | None:
    """The accelerator llm-compressor would compress on (its `get_main_device`), if any."""
    if not torch.accelerator.is_available():
        return None
    kind = torch.accelerator.current_accelerator().type
    return torch.device(kind, torch.accelerator.current_device_index())


def _is_offloaded(module: nn.Module) -> bool:
    from compressed_tensors.offload.cache import OffloadCache

    return isinstance(module._parameters, OffloadCache)


def decide_placement(model: nn.Module, accelerator: torch.device | None) -> Placement:
    """What HSR does with `model` while it scores; `accelerator` is None on a CPU-only machine."""
    if any(_is_offloaded(m) for m in model.modules()):
        return Placement("keep", "already dispatched by compressed-tensors", accelerator)
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return Placement("keep", "already dispatched by accelerate", accelerator)
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    if devices - {"cpu", "meta"}:
        return Placement("keep", f"already on {sorted(devices - {'cpu', 'meta'})[0]}", accelerator)
    if accelerator is None:
        return Placement("cpu", "no accelerator is available", None)
    return Placement("dispatch", f"on the CPU while {accelerator} is available", accelerator)


def execution_device(model: nn.Module) -> torch.device:
    """Where inputs go: the input embeddings' execution device (onload device if offloaded)."""
    from compressed_tensors.offload import get_execution_device

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = get_execution_device(embeddings if embeddings is not None else model)
    if device == "disk":  # an onload device is never the disk; be explicit rather than crash later
        raise ValueError("the input embeddings' execution device is the disk")
    return torch.device(device)


def dispatch_state(model: nn.Module) -> dict[str, tuple]:
    """Per module: offloaded or not, onload and offload devices, and each tensor's device and id.

    Two equal states mean the same dispatch and the very same tensor objects in the same places.
    """
    from compressed_tensors.offload import get_execution_device, get_offloaded_device

    state = {}
    for name, module in model.named_modules():
        offloaded = _is_offloaded(module)
        tensors = (
            {}
            if offloaded
            else {
                key: (id(t), str(t.device), t.dtype)
                for key, t in [*module._parameters.items(), *module._buffers.items()]
                if t is not None
            }
        )
        state[name] = (
            offloaded,
            str(get_execution_device(module, torch.device("cpu"))),
            str(get_offloaded_device(module, torch.device("cpu"))),
            "forward" in module.__dict__,
            tuple(sorted(tensors.items())),
        )
    return state


@contextmanager
def execution_placement(
    model: nn.Module,
    accelerator: Callable[[], torch.device | None] | None = None,
    device_memory: dict[torch.device, int] | None = None,
    extra_memory: int | None = None,
) -> Iterator[Placement]:
    """Run the body with `model` on its execution device; yields the decision, with the device
    inputs go to as its `device`.

    `accelerator` answers which accelerator exists (`accelerator_device` by default);
    `device_memory` overrides the memory per device that `dispatch_model` may fill, and
    `extra_memory` the memory it reserves for activations (its own estimate by default).
    """
    placement = decide_placement(model, (accelerator or accelerator_device)())
    if placement.action == "cpu":
        logger.info("HSR: no accelerator available; head and weight scoring run on the CPU")
        yield replace(placement, device=torch.device("cpu"))
        return
    if placement.action == "keep":
        device = execution_device(model)
        logger.info(f"HSR scores on {device}: the model is {placement.reason}")
        yield replace(placement, device=device)
        return

    from compressed_tensors.offload import dispatch_model, remove_dispatch

    saved = {
        module: (module._parameters, module._buffers, module.__dict__.get("forward", _MISSING))
        for module in model.modules()
    }
    try:
        dispatch_model(model, device_memory or available_device_memory(), extra_memory)
        device = execution_device(model)
        logger.info(f"HSR dispatched the model to {device} for scoring ({placement.reason})")
        yield replace(placement, device=device)
    finally:
        remove_dispatch(model, onload_tensors=False)
        for module, (params, buffers, forward) in saved.items():
            module._parameters, module._buffers = params, buffers
            if forward is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward
        if placement.accelerator.type != "cpu" and hasattr(torch.accelerator, "empty_cache"):
            torch.accelerator.empty_cache()  # the dispatched copies are garbage now
        logger.debug("HSR returned the model to its original placement")
