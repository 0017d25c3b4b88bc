"""Find the language decoder's self-attention blocks and how their projections split by heads.

Discovery is generic: a self-attention block is a module inside a decoder layer
(`...layers.<i>...`) with one of three layouts, each described by `HeadBand`s (which rows or
columns of which Linear belong to which head):
- separate `q_proj`, `k_proj`, `v_proj`, `o_proj` (Llama, Qwen, Mistral, Gemma, ...): q rows per
  head, k/v rows per KV group, o columns per head;
- fused `qkv_proj` = [q; k; v] stacked by rows (Phi-3, Phi-3.5, Phi-4, Phi-4-multimodal), with
  the GQA sizes from the config: the same bands at the row offsets of q, k and v;
- multi-head latent attention (DeepSeek-V2/V3 and models built the same way): the rows of
  `q_b_proj` (or `q_proj`) and of `kv_b_proj` per head, and the columns of `o_proj` per head.
  The shared low-rank down-projections (`q_a_proj`, `kv_a_proj_with_mqa`) belong to no head:
  they are listed in `AttentionBlock.unsliced` and left alone.
Head counts come from the (text) config and are checked against the projection shapes. Vision
towers, projectors and cross-attention blocks (Mllama) are never returned. Other fused layouts
(GPT-NeoX's interleaved `query_key_value`, GPT-2's `c_attn`, DBRX's `Wqkv`) get a clear error
naming the module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from hsr_eval.language_weights import is_vision_module
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.slicing import HeadBand, SlicedProjection

__all__ = [
    "LAYER_INDEX",
    "AttentionBlock",
    "UnsupportedArchitectureError",
    "find_attention_blocks",
    "is_multimodal",
    "text_config",
]

FUSED_NAMES = ("c_attn", "query_key_value", "Wqkv", "qkv", "W_pack")
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLA_SHARED = ("q_a_proj", "kv_a_proj_with_mqa")


class UnsupportedArchitectureError(InvalidInputError):
    """The model's attention cannot be mapped to per-head q/k/v/o slices."""


@dataclass(frozen=True)
class AttentionBlock:
    """One self-attention block: its heads, and how its Linear layers split by them.

    `sliced`: each Linear with its head bands; `query` and `output` name the bands that head
    ablation scales (the head's query features at the output of a q projection, and its
    attention output at the input of o_proj); `keys_values`, the k/v bands that reference
    ablation scales too. Left empty, the layout of separate q/k/v/o projections is used.
    """

    layer: int
    name: str
    module: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliced: tuple[SlicedProjection, ...] = ()
    layout: str = "separate"  # separate | fused | mla
    unsliced: tuple[str, ...] = ()  # Linear layers of the block that belong to no head
    keys_values: tuple[tuple[str, HeadBand], ...] = field(default=())

    @property
    def kv_group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_group(self, head: int) -> int:
        return head // self.kv_group_size

    def _sliced(self) -> tuple[SlicedProjection, ...]:
        if self.sliced:
            return self.sliced
        return _separate_layout(self.name, self.module, self.num_heads, self.num_kv_heads,
                                self.head_dim)  # fmt: skip

    def projection(self, short: str) -> nn.Linear:
        """The Linear that holds projection `short` (q, k, v or o; the fused one for q/k/v)."""
        role = {"q": "query", "o": "output"}.get(short)
        if role is not None:
            return self.site(role)[0]
        return getattr(self.module, f"{short}_proj")

    def site(self, role: str) -> tuple[nn.Linear, HeadBand]:
        """(module, band) where ablation scales a head: `query` (a q projection's output) or
        `output` (o_proj's input)."""
        for sliced in self._sliced():
            if sliced.role == role:
                return sliced.module, sliced.bands[0]
        raise KeyError(role)

    def key_value_sites(self) -> list[tuple[nn.Linear, HeadBand]]:
        """The k and v bands (at a projection's output) that reference ablation scales too."""
        if self.keys_values:
            modules = {s.name: s.module for s in self._sliced()}
            return [(modules[name], band) for name, band in self.keys_values]
        return [(s.module, s.bands[0]) for s in self._sliced() if s.short in ("k", "v")]

    def projections(self) -> Iterable[tuple[str, str, nn.Linear]]:
        """(short name, full module name, module) for every Linear that holds head slices."""
        for sliced in self._sliced():
            yield sliced.short, sliced.name, sliced.module

    def sliced_projections(self) -> tuple[SlicedProjection, ...]:
        return self._sliced()


def _separate_layout(name, module, heads, kv, dim) -> tuple[SlicedProjection, ...]:
    def get(short):
        return getattr(module, f"{short}_proj")

    def band(per):
        return (HeadBand(0, dim, heads if per == "head" else kv, per),)

    return (
        SlicedProjection("q", f"{name}.q_proj", get("q"), 0, band("head"), "query"),
        SlicedProjection("k", f"{name}.k_proj", get("k"), 0, band("kv_group")),
        SlicedProjection("v", f"{name}.v_proj", get("v"), 0, band("kv_group")),
        SlicedProjection("o", f"{name}.o_proj", get("o"), 1, band("head"), "output"),
    )  # fmt: skip


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


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Linear) else None


def _check_shapes(name: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UnsupportedArchitectureError(f"{name}: {message}")


def _gqa_sizes(model: nn.Module, name: str, module: nn.Module, q_rows: int):
    config = text_config(model)
    num_heads = getattr(config, "num_attention_heads", None) or getattr(module, "num_heads", None)
    if not num_heads:
        raise UnsupportedArchitectureError(
            f"{name}: cannot find num_attention_heads in the (text) config"
        )
    num_kv = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = (
        getattr(module, "head_dim", None)
        or getattr(config, "head_dim", None)
        or q_rows // num_heads
    )
    _check_shapes(
        name,
        [
            (
                num_heads % num_kv == 0,
                f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads "
                f"{num_kv}",
            )
        ],
    )
    return int(num_heads), int(num_kv), int(head_dim)


def _separate_block(model, layer, name, module) -> AttentionBlock:
    q, k, v, o = (getattr(module, p) for p in PROJECTIONS)
    heads, kv, dim = _gqa_sizes(model, name, module, q.out_features)
    _check_shapes(
        name,
        [
            (
                q.out_features == heads * dim,
                f"q_proj out_features {q.out_features} != heads {heads} x head_dim {dim}",
            ),
            (
                k.out_features == kv * dim,
                f"k_proj out_features {k.out_features} != kv heads {kv} x head_dim {dim}",
            ),
            (
                v.out_features == kv * dim,
                f"v_proj out_features {v.out_features} != kv heads {kv} x head_dim {dim}",
            ),
            (
                o.in_features == heads * dim,
                f"o_proj in_features {o.in_features} != heads {heads} x head_dim {dim}",
            ),
        ],
    )
    return AttentionBlock(layer, name, module, heads, kv, dim)


def _fused_block(model, layer, name, module) -> AttentionBlock:
    """[q; k; v] stacked by rows in one `qkv_proj` (Phi-3's layout)."""
    qkv, o = module.qkv_proj, module.o_proj
    heads, kv, dim = _gqa_sizes(model, name, module, o.in_features)
    _check_shapes(
        name,
        [
            (
                qkv.out_features == (heads + 2 * kv) * dim,
                f"qkv_proj out_features {qkv.out_features} != (heads {heads} + 2 x kv heads "
                f"{kv}) x head_dim {dim}: not a [q; k; v] stack",
            ),
            (
                o.in_features == heads * dim,
                f"o_proj in_features {o.in_features} != heads {heads} x head_dim {dim}",
            ),
        ],
    )
    q_band = HeadBand(0, dim, heads, "head")
    k_band = HeadBand(heads * dim, dim, kv, "kv_group")
    v_band = HeadBand((heads + kv) * dim, dim, kv, "kv_group")
    qkv_name = f"{name}.qkv_proj"
    sliced = (
        SlicedProjection("qkv", qkv_name, qkv, 0, (q_band, k_band, v_band), "query"),
        SlicedProjection("o", f"{name}.o_proj", o, 1, (HeadBand(0, dim, heads, "head"),), "output"),
    )  # fmt: skip
    return AttentionBlock(
        layer, name, module, heads, kv, dim, sliced, "fused",
        keys_values=((qkv_name, k_band), (qkv_name, v_band)),
    )  # fmt: skip


def _is_mla(module: nn.Module) -> bool:
    return (
        _linear(module, "kv_b_proj") is not None
        and _linear(module, "o_proj") is not None
        and (_linear(module, "q_b_proj") is not None or _linear(module, "q_proj") is not None)
    )


def _mla_block(model, layer, name, module) -> AttentionBlock:
    """Multi-head latent attention: per-head rows of the query and key/value up-projections,
    per-head columns of o_proj; the shared down-projections belong to no head."""
    config = text_config(model)
    sizes = {
        key: getattr(config, key, None)
        for key in ("num_attention_heads", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    }
    missing = [key for key, value in sizes.items() if not value]
    if missing:
        raise UnsupportedArchitectureError(
            f"{name}: multi-head latent attention (kv_b_proj) without {', '.join(missing)} in "
            "the config, so its per-head slices are unknown"
        )
    heads = int(sizes["num_attention_heads"])
    # MLA makes keys and values per head; transformers' DeepSeek attention still repeats them
    # num_attention_heads / num_key_value_heads times, so such a config fails on any padded
    # batch (and in eager attention) inside transformers itself, long after calibration starts
    groups = getattr(module, "num_key_value_groups", 1)
    if groups != 1:
        raise UnsupportedArchitectureError(
            f"{name}: multi-head latent attention with num_key_value_heads "
            f"{getattr(config, 'num_key_value_heads', '?')} below num_attention_heads {heads}: "
            f"transformers repeats this layer's per-head keys {groups} times, so any padded "
            "batch fails inside transformers itself; set num_key_value_heads to "
            "num_attention_heads, as DeepSeek's published configs do"
        )
    qk_dim = int(sizes["qk_nope_head_dim"]) + int(sizes["qk_rope_head_dim"])
    kv_dim = int(sizes["qk_nope_head_dim"]) + int(sizes["v_head_dim"])
    v_dim = int(sizes["v_head_dim"])
    q_short = "q_b" if _linear(module, "q_b_proj") is not None else "q"
    q, kv_b, o = (getattr(module, f"{s}_proj") for s in (q_short, "kv_b", "o"))
    _check_shapes(
        name,
        [
            (
                q.out_features == heads * qk_dim,
                f"{q_short}_proj out_features {q.out_features} != heads {heads} x "
                f"(qk_nope_head_dim + qk_rope_head_dim) {qk_dim}",
            ),
            (
                kv_b.out_features == heads * kv_dim,
                f"kv_b_proj out_features {kv_b.out_features} != heads {heads} x "
                f"(qk_nope_head_dim + v_head_dim) {kv_dim}",
            ),
            (
                o.in_features == heads * v_dim,
                f"o_proj in_features {o.in_features} != heads {heads} x v_head_dim {v_dim}",
            ),
        ],
    )
    kv_name = f"{name}.kv_b_proj"
    kv_band = HeadBand(0, kv_dim, heads, "head")
    sliced = (
        SlicedProjection(q_short, f"{name}.{q_short}_proj", q, 0,
                         (HeadBand(0, qk_dim, heads, "head"),), "query"),
        SlicedProjection("kv_b", kv_name, kv_b, 0, (kv_band,)),
        SlicedProjection("o", f"{name}.o_proj", o, 1, (HeadBand(0, v_dim, heads, "head"),),
                         "output"),
    )  # fmt: skip
    unsliced = tuple(f"{name}.{n}" for n in MLA_SHARED if _linear(module, n) is not None)
    # every head has its own keys and values here: its KV group is itself
    return AttentionBlock(
        layer, name, module, heads, heads, v_dim, sliced, "mla", unsliced,
        keys_values=((kv_name, kv_band),),
    )  # fmt: skip


def _attention_block(model, layer, name, module) -> AttentionBlock | None:
    if all(_linear(module, p) is not None for p in PROJECTIONS):
        return _separate_block(model, layer, name, module)
    if _linear(module, "qkv_proj") is not None and _linear(module, "o_proj") is not None:
        return _fused_block(model, layer, name, module)
    if _is_mla(module):
        return _mla_block(model, layer, name, module)
    return None


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
        if leaf in FUSED_NAMES and isinstance(module, nn.Module) and LAYER_INDEX.search(name):
            if isinstance(module, nn.Linear) or hasattr(module, "weight"):
                raise UnsupportedArchitectureError(
                    f"{name}: fused attention projection ({type(module).__name__}) in a layout "
                    "HSR cannot slice by heads; it supports separate q_proj/k_proj/v_proj/o_proj, "
                    "a [q; k; v] qkv_proj (Phi-3) and multi-head latent attention (DeepSeek)"
                )
        if "cross_attn" in leaf or "cross_attention" in leaf or "encoder_attn" in leaf:
            continue  # Mllama's cross-attention layers attend to image states, not to the text
        match = LAYER_INDEX.search(name)
        if match is None:
            continue
        if scopes is not None and not any(name == s or name.startswith(s + ".") for s in scopes):
            continue
        block = _attention_block(model, int(match.group(1)), name, module)
        if block is not None:
            blocks.append(block)
    if not blocks:
        raise UnsupportedArchitectureError(
            f"no language self-attention blocks (q_proj/k_proj/v_proj/o_proj, a fused qkv_proj, "
            f"or multi-head latent attention) found in {type(model).__name__}"
            + (" within the targeted modules" if scopes is not None else "")
        )
    layers = [b.layer for b in blocks]
    if len(set(layers)) != len(layers):
        dupes = sorted({b.name for b in blocks if layers.count(b.layer) > 1})
        raise UnsupportedArchitectureError(
            f"several self-attention blocks share a layer index: {dupes}"
        )
    return sorted(blocks, key=lambda b: b.layer)
