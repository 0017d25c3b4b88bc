"""A pruning computed once, applied again: the weights of a pruned model, saved and copied back.

`hsr sweep` prunes a model once, saves the pruned weights of its Linear layers with
`save_pruned_weights`, and runs every grid point as `PrunedWeightsModifier` (which puts those
weights into a fresh dense model) followed by `HSRModifier`. So every point scores heads on the
dense model, restores into exactly the same pruned model, and nothing is pruned twice.
"""

from __future__ import annotations

from pathlib import Path

import torch
from compressed_tensors.utils import align_module_device, update_offload_parameter
from llmcompressor.core import Event, State
from llmcompressor.modifiers import Modifier
from loguru import logger
from torch import nn

from hsr_plugin.errors import InvalidInputError

__all__ = ["PRUNED_WEIGHTS_FILE", "PrunedWeightsModifier", "save_pruned_weights"]

PRUNED_WEIGHTS_FILE = "pruned_weights.safetensors"


def _linear_weights(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def save_pruned_weights(model: nn.Module, folder: Path, reference: nn.Module) -> Path:
    """Save the weights of every Linear layer of `model` that differs from `reference` (the
    dense model), keyed by module name; returns the file."""
    from safetensors.torch import save_file

    from hsr_eval.files import atomic_path

    dense = _linear_weights(reference)
    tensors = {}
    for name, module in _linear_weights(model).items():
        with align_module_device(module), align_module_device(dense[name]):
            if not torch.equal(module.weight, dense[name].weight):
                tensors[name] = module.weight.detach().cpu().contiguous().clone()
    if not tensors:
        raise InvalidInputError("the pruning stage changed no Linear weight: nothing to sweep over")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PRUNED_WEIGHTS_FILE
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


class PrunedWeightsModifier(Modifier):
    """
    Replace Linear weights with those of a saved pruned model (`save_pruned_weights`): the
    pruning stage of `hsr sweep`, computed once. HSRModifier accepts it as the pruning before it.

    :param path: the safetensors file written by `save_pruned_weights`
    """

    path: str

    def on_initialize(self, state: State, **kwargs) -> bool:
        from hsr_plugin.dense_source import safetensors_keys

        names = set(_linear_weights(state.model))
        missing = [key for key in safetensors_keys(self.path) if key not in names]
        if missing:
            raise InvalidInputError(
                f"{self.path}: {missing[0]} is not a Linear layer of this model"
            )
        return True

    def on_calibration_end(self, state: State, event: Event, **kwargs):
        from safetensors import safe_open

        modules = _linear_weights(state.model)
        with safe_open(self.path, framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:
                module = modules[key]
                weight = handle.get_tensor(key)
                if weight.shape != module.weight.shape:
                    raise InvalidInputError(f"{self.path}: {key} has shape {tuple(weight.shape)}")
                update_offload_parameter(module, "weight", weight.to(module.weight.dtype))
        logger.info(f"applied the pruned weights of {len(keys)} layers from {self.path}")

    def on_finalize(self, state: State, **kwargs) -> bool:
        return True
