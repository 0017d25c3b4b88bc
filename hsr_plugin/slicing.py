"""Which weights of q/k/v/o belong to an attention head (HF layout: out_features x in_features).

Exact mode (default) follows the head's own rows and columns:
  W_q rows [h*d, (h+1)*d); W_k, W_v rows [g*d, (g+1)*d) for the head's KV group g;
  W_o columns [h*d, (h+1)*d).
Reference mode reproduces the authors' code (head_slicing: reference): q/k/v keep the input-column
band [h*in//H, (h+1)*in//H) (integer division, as the reference computes it), and o_proj keeps the
whole matrix whenever its layer holds a selected head.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "HeadBand",
    "HeadSlicing",
    "Projection",
    "SlicedProjection",
    "band_mask",
    "head_slice_mask",
    "mlp_channel_slices",
    "union_head_slices",
]

HeadSlicing = Literal["exact", "reference"]
Projection = Literal["q", "k", "v", "o"]


@dataclass(frozen=True)
class HeadBand:
    """`units` consecutive slices of `width` features from `offset` on, along a Linear's rows
    (output features) or columns (input features): unit u owns [offset + u*width,
    offset + (u+1)*width). A unit is a query head (`per="head"`) or a KV group."""

    offset: int
    width: int
    units: int
    per: Literal["head", "kv_group"]

    def span(self, head: int, kv_group: int) -> slice:
        unit = head if self.per == "head" else kv_group
        return slice(self.offset + unit * self.width, self.offset + (unit + 1) * self.width)

    @property
    def end(self) -> int:
        return self.offset + self.units * self.width


@dataclass(frozen=True)
class SlicedProjection:
    """One Linear of an attention block and its head bands along `axis` (0 rows, 1 columns).

    `role` marks where head ablation acts: `query` (the head's query features at this Linear's
    output) or `output` (the head's attention output at o_proj's input)."""

    short: str
    name: str
    module: nn.Linear
    axis: int
    bands: tuple[HeadBand, ...]
    role: str | None = None

    @property
    def row_blocks(self) -> tuple[tuple[int, int], ...]:
        """The row blocks of a Linear that stacks several projections (fused q/k/v): each one
        is ranked as its own matrix. Empty for a Linear that is one projection."""
        if self.axis != 0 or len(self.bands) < 2:
            return ()
        return tuple((band.offset, band.end) for band in self.bands)


def band_mask(
    shape: tuple[int, int],
    axis: int,
    bands: Iterable[HeadBand],
    heads: Iterable[tuple[int, int]],
    num_heads: int,
    mode: HeadSlicing = "exact",
) -> torch.Tensor:
    """Union of the (head, kv_group) units' slices of one Linear of `shape`.

    Exact: each band's rows (axis 0) or columns (axis 1) of the unit. Reference (the authors'
    code, one unit per KV group g): a Linear sliced by rows keeps the input-column band
    [g*in//H, (g+1)*in//H) over all its rows, and one sliced by columns (o_proj) is kept whole.
    """
    if mode not in ("exact", "reference"):
        raise ValueError(f"head slicing mode must be 'exact' or 'reference', got {mode!r}")
    rows, cols = (int(x) for x in shape)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    bands = tuple(bands)
    for head, kv_group in heads:
        if mode == "reference":
            if axis == 1:
                mask[:] = True
            else:
                mask[:, head * cols // num_heads : (head + 1) * cols // num_heads] = True
            continue
        for band in bands:
            span = band.span(head, kv_group)
            if axis == 0:
                mask[span, :] = True
            else:
                mask[:, span] = True
    return mask


def head_slice_mask(
    shape: tuple[int, int],
    projection: Projection,
    head: int,
    kv_group: int,
    head_dim: int,
    num_heads: int,
    mode: HeadSlicing = "exact",
) -> torch.Tensor:
    """Boolean mask of `shape` that is True on the weights of one head."""
    rows, cols = _check(shape, projection, head, kv_group, head_dim, num_heads, mode)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    if mode == "reference":
        if projection == "o":
            mask[:] = True
        else:
            mask[:, head * cols // num_heads : (head + 1) * cols // num_heads] = True
    elif projection == "q":
        mask[head * head_dim : (head + 1) * head_dim, :] = True
    elif projection in ("k", "v"):
        mask[kv_group * head_dim : (kv_group + 1) * head_dim, :] = True
    else:
        mask[:, head * head_dim : (head + 1) * head_dim] = True
    return mask


def union_head_slices(
    shape: tuple[int, int],
    projection: Projection,
    heads: Iterable[tuple[int, int]],
    head_dim: int,
    num_heads: int,
    mode: HeadSlicing = "exact",
) -> torch.Tensor:
    """Union of the slices of several (head, kv_group) pairs of one layer."""
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    for head, kv_group in heads:
        mask |= head_slice_mask(shape, projection, head, kv_group, head_dim, num_heads, mode)
    return mask


def _check(shape, projection, head, kv_group, head_dim, num_heads, mode) -> tuple[int, int]:
    if mode not in ("exact", "reference"):
        raise ValueError(f"head slicing mode must be 'exact' or 'reference', got {mode!r}")
    if projection not in ("q", "k", "v", "o"):
        raise ValueError(f"projection must be one of q, k, v, o; got {projection!r}")
    if len(shape) != 2:
        raise ValueError(f"weight shape must be 2-D (out, in), got {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    if num_heads <= 0 or head_dim <= 0:
        raise ValueError(f"num_heads ({num_heads}) and head_dim ({head_dim}) must be positive")
    if not 0 <= head < num_heads:
        raise ValueError(f"head {head} is outside [0, {num_heads})")
    if kv_group < 0:
        raise ValueError(f"kv_group must be >= 0, got {kv_group}")
    if mode == "exact":
        if projection == "q" and rows < num_heads * head_dim:
            raise ValueError(
                f"q_proj has {rows} rows, fewer than num_heads*head_dim = {num_heads * head_dim}"
            )
        if projection in ("k", "v") and (kv_group + 1) * head_dim > rows:
            raise ValueError(
                f"{projection}_proj has {rows} rows; KV group {kv_group} needs "
                f"{(kv_group + 1) * head_dim}"
            )
        if projection == "o" and cols < num_heads * head_dim:
            raise ValueError(
                f"o_proj has {cols} columns, fewer than num_heads*head_dim = {num_heads * head_dim}"
            )
    return rows, cols


def mlp_channel_slices(
    shape: tuple[int, int], projection: str, channels: Iterable[int]
) -> torch.Tensor:
    """The weights of MLP intermediate channels: rows of gate/up, columns of down."""
    if len(shape) != 2:
        raise ValueError(f"weight shape must be 2-D (out, in), got {tuple(shape)}")
    if projection not in ("gate", "up", "down"):
        raise ValueError(f"projection must be gate, up or down; got {projection!r}")
    rows, cols = (int(s) for s in shape)
    width = cols if projection == "down" else rows
    index = torch.tensor(sorted(set(channels)), dtype=torch.long)
    if index.numel() and not (0 <= int(index.min()) and int(index.max()) < width):
        raise ValueError(f"channel indices must lie in [0, {width}), got {index.tolist()}")
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    if projection == "down":
        mask[:, index] = True
    else:
        mask[index, :] = True
    return mask
