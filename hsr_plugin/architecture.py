"""Find the language decoder's self-attention blocks and their q/k/v/o projections.

Discovery is generic: a self-attention block is a module with four Linear children named
q_proj, k_proj, v_proj and o_proj inside a decoder layer (`...layers.<i>...`). Head counts come
from the (text) config and are checked against the projection shapes. Vision towers, projectors
and cross-attention blocks (Mllama) are never returned. Fused projections (qkv_proj, c_attn,
query_key_value, Wqkv) in the language model get a clear error naming the module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from hsr_eval.common import is_vision_module

__all__ = [
    "AttentionBlock",
    "MLPBlock",
    "UnsupportedArchitectureError",
    "find_attention_blocks",
    "find_mlp_blocks",
    "is_multimodal",
    "text_config",
]

FUSED_NAMES = ("qkv_proj", "c_attn", "query_key_value", "Wqkv", "qkv")
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class UnsupportedArchitectureError(ValueError):
    """The model's attention cannot be mapped to per-head q/k/v/o slices."""


@dataclass(frozen=True)
class AttentionBlock:
    layer: int
    name: str
    module: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_group(self, head: int) -> int:
        return head // self.kv_group_size

    def projection(self, short: str) -> nn.Linear:
        return getattr(self.module, f"{short}_proj")

    def projection_name(self, short: str) -> str:
        return f"{self.name}.{short}_proj"

    def projections(self) -> Iterable[tuple[str, str, nn.Linear]]:
        """(short name, full module name, module) for q, k, v, o."""
        for short in ("q", "k", "v", "o"):
            yield short, self.projection_name(short), self.projection(short)


def is_multimodal(model: nn.Module) -> bool:
    """A model whose config has a vision part (LLaVA, Qwen2-VL, ...)."""
    return hasattr(getattr(model, "config", None), "vision_config")


def text_config(model: nn.Module):
    """The language decoder's config (the model's own config for a text-only model)."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no `config`")
    getter = getattr(config, "get_text_config", None)
    text = (
        getter(decoder=True) if callable(getter) else getattr(config, "text_config", None) or config
    )
    return text


def _head_counts(model: nn.Module, name: str, module: nn.Module) -> tuple[int, int, int]:
    config = text_config(model)
    num_heads = getattr(config, "num_attention_heads", None) or getattr(module, "num_heads", None)
    if not num_heads:
        raise UnsupportedArchitectureError(
            f"{name}: cannot find num_attention_heads in the (text) config"
        )
    num_kv = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(module, "head_dim", None) or getattr(config, "head_dim", None)
    q, k, v, o = (getattr(module, p) for p in PROJECTIONS)
    if not head_dim:
        head_dim = q.out_features // num_heads
    checks = [
        (
            q.out_features == num_heads * head_dim,
            f"q_proj out_features {q.out_features} != heads {num_heads} x head_dim {head_dim}",
        ),
        (
            k.out_features == num_kv * head_dim,
            f"k_proj out_features {k.out_features} != kv heads {num_kv} x head_dim {head_dim}",
        ),
        (
            v.out_features == num_kv * head_dim,
            f"v_proj out_features {v.out_features} != kv heads {num_kv} x head_dim {head_dim}",
        ),
        (
            o.in_features == num_heads * head_dim,
            f"o_proj in_features {o.in_features} != heads {num_heads} x head_dim {head_dim}",
        ),
        (
            num_heads % num_kv == 0,
            f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UnsupportedArchitectureError(f"{name}: {message}")
    return int(num_heads), int(num_kv), int(head_dim)


def find_attention_blocks(
    model: nn.Module, within: Iterable[str] | None = None
) -> list[AttentionBlock]:
    """All language self-attention blocks, in layer order.

    `within`: optional names of targeted modules (e.g. decoder layers matched by the recipe's
    targets); only blocks inside one of them are returned.
    """
    scopes = tuple(within) if within is not None else None
    blocks: list[AttentionBlock] = []
    for name, module in model.named_modules():
        if is_vision_module(name):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in FUSED_NAMES and isinstance(module, nn.Linear) and LAYER_INDEX.search(name):
            raise UnsupportedArchitectureError(
                f"{name}: fused attention projection ({type(module).__name__}); HSR needs separate "
                "q_proj/k_proj/v_proj/o_proj Linear layers to slice heads"
            )
        if not all(isinstance(getattr(module, p, None), nn.Linear) for p in PROJECTIONS):
            continue
        if "cross_attn" in leaf or "cross_attention" in leaf or "encoder_attn" in leaf:
            continue  # Mllama's cross-attention layers attend to image states, not to the text
        match = LAYER_INDEX.search(name)
        if match is None:
            continue
        if scopes is not None and not any(name == s or name.startswith(s + ".") for s in scopes):
            continue
        heads, kv, dim = _head_counts(model, name, module)
        blocks.append(AttentionBlock(int(match.group(1)), name, module, heads, kv, dim))
    if not blocks:
        raise UnsupportedArchitectureError(
            f"no language self-attention blocks with q_proj/k_proj/v_proj/o_proj found in "
            f"{type(model).__name__}"
            + (" within the targeted modules" if scopes is not None else "")
        )
    layers = [b.layer for b in blocks]
    if len(set(layers)) != len(layers):
        dupes = sorted({b.name for b in blocks if layers.count(b.layer) > 1})
        raise UnsupportedArchitectureError(
            f"several self-attention blocks share a layer index: {dupes}"
        )
    return sorted(blocks, key=lambda b: b.layer)


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
    return sorted(blocks, key=lambda b: b.layer)
