"""Find the language decoder's gated MLPs (gate_proj, up_proj -> down_proj), whose intermediate
channels MLP realignment (`units: [heads, mlp]`) ranks and restores. Vision towers are skipped,
and a layer with more than one gated MLP (a mixture of experts) is refused in one line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from hsr_eval.language_weights import is_vision_module
from hsr_plugin.architecture import LAYER_INDEX, UnsupportedArchitectureError

__all__ = ["MLPBlock", "find_mlp_blocks"]

MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class MLPBlock:
    """A gated MLP (gate_proj, up_proj -> down_proj) of one decoder layer; its channels are the
    intermediate features: row j of gate/up and column j of down."""

    layer: int
    name: str
    module: nn.Module
    intermediate: int

    def projection(self, short: str) -> nn.Linear:
        return getattr(self.module, f"{short}_proj")

    def projections(self) -> Iterable[tuple[str, str, nn.Linear]]:
        for short in ("gate", "up", "down"):
            yield short, f"{self.name}.{short}_proj", self.projection(short)


def find_mlp_blocks(model: nn.Module, layers: Iterable[int] | None = None) -> list[MLPBlock]:
    """The language decoder's gated MLPs, in layer order (only `layers`, if given)."""
    wanted = set(layers) if layers is not None else None
    blocks = []
    for name, module in model.named_modules():
        if is_vision_module(name):
            continue
        if not all(isinstance(getattr(module, p, None), nn.Linear) for p in MLP_PROJECTIONS):
            continue
        match = LAYER_INDEX.search(name)
        if match is None or (wanted is not None and int(match.group(1)) not in wanted):
            continue
        gate, up, down = (getattr(module, p) for p in MLP_PROJECTIONS)
        if not gate.out_features == up.out_features == down.in_features:
            raise UnsupportedArchitectureError(
                f"{name}: gate_proj/up_proj outputs ({gate.out_features}, {up.out_features}) and "
                f"down_proj input ({down.in_features}) differ"
            )
        blocks.append(MLPBlock(int(match.group(1)), name, module, down.in_features))
    if not blocks:
        raise UnsupportedArchitectureError(
            f"no gated MLP (gate_proj/up_proj/down_proj) found in {type(model).__name__}'s "
            "decoder layers: MLP realignment (units: [heads, mlp]) needs one"
        )
    per_layer: dict[int, list[str]] = {}
    for block in blocks:
        per_layer.setdefault(block.layer, []).append(block.name)
    crowded = next((names for names in per_layer.values() if len(names) > 1), None)
    if crowded is not None:
        raise UnsupportedArchitectureError(
            f"MLP realignment (units: [heads, mlp]) needs one gated MLP per decoder layer; "
            f"{len(crowded)} share a layer (mixture of experts?): {crowded[0]}, {crowded[1]}, ..."
        )
    return sorted(blocks, key=lambda b: b.layer)
