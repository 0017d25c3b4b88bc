"""Where the dense weights come from: a CPU snapshot taken before pruning, or a checkpoint.

`DenseSnapshot` copies the named weights to CPU (HSRModifier takes it in `on_initialize`, which
runs before any pruning). `SafetensorsDenseSource` reads a local safetensors checkpoint lazily,
tensor by tensor, and maps module names to checkpoint keys across transformers 5's renames
(`model.language_model.layers.*` in memory vs `language_model.model.layers.*` or `model.layers.*`
in older VLM checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from compressed_tensors.utils import align_module_device
from torch import nn

from hsr_plugin.errors import InvalidInputError, MissingInputError

__all__ = ["DenseSource", "DenseSnapshot", "SafetensorsDenseSource", "checkpoint_key_candidates"]


class DenseSource(Protocol):
    def get(self, module_name: str) -> torch.Tensor: ...


class DenseSnapshot:
    """CPU copies of the weights of the given modules, taken now."""

    def __init__(self, modules: dict[str, nn.Module]):
        self._weights: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, module in modules.items():
                with align_module_device(module):
                    self._weights[name] = module.weight.detach().to("cpu", copy=True)

    def get(self, module_name: str) -> torch.Tensor:
        try:
            return self._weights[module_name]
        except KeyError:
            raise KeyError(f"no dense snapshot of {module_name}") from None

    def __len__(self) -> int:
        return len(self._weights)


def checkpoint_key_candidates(module_name: str) -> list[str]:
    """Checkpoint keys that may hold `<module_name>.weight`, most likely first."""
    names = [module_name]
    if module_name.startswith("model.language_model."):
        rest = module_name[len("model.language_model.") :]
        names += [f"language_model.model.{rest}", f"model.{rest}", f"language_model.{rest}", rest]
    elif module_name.startswith("model."):
        rest = module_name[len("model.") :]
        names += [rest, f"language_model.model.{rest}", f"model.language_model.{rest}"]
    else:
        names += [f"model.{module_name}"]
    return [f"{name}.weight" for name in dict.fromkeys(names)]


def safetensors_keys(file: str | Path) -> list[str]:
    """The tensor names of a safetensors file; a truncated or foreign file is named in the error."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    except Exception as err:  # SafetensorError, OSError: say which file
        raise InvalidInputError(f"{file}: not a readable safetensors file ({err})") from None


class SafetensorsDenseSource:
    """Lazy reader of a local safetensors checkpoint (single file or sharded with an index)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingInputError(f"dense_model {self.path} does not exist")
        self._key_to_file = self._index()

    def _index(self) -> dict[str, Path]:
        if self.path.is_file():
            files = [self.path]
        else:
            index = self.path / "model.safetensors.index.json"
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                return {key: self.path / name for key, name in weight_map.items()}
            files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise MissingInputError(f"dense_model {self.path} holds no .safetensors files")
        mapping = {}
        for file in files:
            mapping.update({key: file for key in safetensors_keys(file)})
        return mapping

    def key_for(self, module_name: str) -> str:
        candidates = checkpoint_key_candidates(module_name)
        for key in candidates:
            if key in self._key_to_file:
                return key
        raise KeyError(
            f"dense_model {self.path} has no weight for {module_name} (tried "
            f"{', '.join(candidates)})"
        )

    def get(self, module_name: str) -> torch.Tensor:
        from safetensors import safe_open

        key = self.key_for(module_name)
        with safe_open(str(self._key_to_file[key]), framework="pt") as handle:
            return handle.get_tensor(key)

    def check(self, modules: dict[str, nn.Module]) -> None:
        """Fail fast: every module has a key, with the module's weight shape."""
        from safetensors import safe_open

        for name, module in modules.items():
            key = self.key_for(name)
            with safe_open(str(self._key_to_file[key]), framework="pt") as handle:
                shape = tuple(handle.get_slice(key).get_shape())
            if shape != tuple(module.weight.shape):
                raise InvalidInputError(
                    f"dense_model {self.path}: {key} has shape {shape}, but {name}.weight has "
                    f"shape {tuple(module.weight.shape)}: is it the same model?"
                )
