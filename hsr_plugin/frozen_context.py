"""Re-run the decoder for the last prompt position only, the other positions' keys and values
frozen at the intact pass's: Ships at about 1/T of the exact re-run's work for T-token prompts.

Ships reads only the last prompt position. The exact path (`hsr_plugin.exact_head_scores`) re-runs
layers l..L-1 at every position after ablating a head of layer l. Here the intact pass keeps its
key/value cache, cut back to the first T-1 positions, and layers l..L-1 run for the last
position alone against it. Several ablated heads share a pass as several copies of that last
position, each seeing the frozen context and itself (a block-diagonal mask), with copy r's head
ablated at copy r (`ablation.ablate_heads_per_position`).

What it leaves out: the ablated head also changes the other positions' outputs of layer l, and
through them the keys and values that layers l+1.. read. For a head of the last layer nothing is
left out, so its score is exact. `check_reproduces` guards each family: with nothing ablated,
the last-position re-run must reproduce the intact pass's final states, or the family's layers
take their positions in a way this module does not replay (a sliding-window or cross-attention
cache, a mask it cannot build) and the exact re-run has to be used.
"""

from __future__ import annotations

from typing import Any

import torch

from hsr_plugin.architecture import UnsupportedArchitectureError
from hsr_plugin.decoder_stack import Captured, DecoderStack, _hidden_of

__all__ = ["LastPositionRerun", "frozen_mask"]


class FrozenContextError(UnsupportedArchitectureError):
    """This family's cache cannot be frozen for a last-position re-run (the exact re-run of
    every position still works)."""


def frozen_mask(given: torch.Tensor | None, rows: int, context: int, copies: int, device) -> Any:
    """The attention mask of `copies` query positions that each see the first `context` keys (as
    the last prompt position saw them in the intact pass) and their own key, not each other's.

    `given` is the mask the layer received in the intact pass, (rows, 1, T, T), boolean (True:
    attend) or additive float; None means every position saw every earlier one."""
    own = torch.eye(copies, dtype=torch.bool, device=device).expand(rows, 1, copies, copies)
    if given is None:
        seen = torch.ones(rows, 1, copies, context, dtype=torch.bool, device=device)
        return torch.cat([seen, own], dim=-1)
    last = given[:, :, -1:, :context]
    if given.dtype == torch.bool:
        return torch.cat([last.expand(-1, -1, copies, -1), own], dim=-1)
    blocked = torch.finfo(given.dtype).min
    own_add = torch.zeros(own.shape, dtype=given.dtype, device=device).masked_fill(~own, blocked)
    return torch.cat([last.expand(-1, -1, copies, -1), own_add], dim=-1)


class LastPositionRerun:
    """One batch's frozen context: the intact cache of the first T-1 positions, and each layer's
    keyword arguments cut to the last position."""

    def __init__(
        self, stack: DecoderStack, captured: Captured, cache: Any, width: int, model_name: str
    ):
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = getattr(cache, "layers", None)
        plain = (DynamicLayer, DynamicSlidingWindowLayer)
        if not layers or any(type(layer) not in plain for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers or ()}) or [
                type(cache).__name__
            ]
            raise FrozenContextError(
                f"{model_name}: its key/value cache ({', '.join(kinds)}) is not a plain cache of "
                "every position, so head_rerun: last_position cannot re-run the last prompt "
                "position against it; head_rerun: all_positions (the default) re-runs every "
                "position"
            )
        for layer in layers:
            # a sliding-window layer keeps every position only while the prompt fits its window;
            # a cross-attention layer (Mllama with a picture) keeps the picture's states instead
            if layer.keys is not None and layer.keys.shape[-2] != width:
                raise FrozenContextError(
                    f"{model_name}: a layer of its key/value cache holds {layer.keys.shape[-2]} "
                    f"entries, not the prompt's {width} positions (a sliding window shorter than "
                    "the prompt, or cross-attention states), so head_rerun: last_position cannot "
                    "re-run the last position against every earlier one; head_rerun: "
                    "all_positions (the default) re-runs every position"
                )
        self.stack, self.captured, self.cache, self.width = stack, captured, cache, width
        self._layers = layers
        # layers the intact pass did not run (Mllama's cross-attention without a picture) hold
        # nothing and stay so
        self._context = [
            None
            if layer.keys is None
            else (layer.keys[..., : width - 1, :], layer.values[..., : width - 1, :])
            for layer in layers
        ]
        # the intact pass's layers were handed the cache: the exact re-run must not append to it
        for given in captured.inputs.values():
            if "past_key_values" in given.kwargs:
                given.kwargs["past_key_values"] = None
            if "use_cache" in given.kwargs:
                given.kwargs["use_cache"] = False

    def _reset(self) -> None:
        """Every layer's cache back to the intact keys and values of the first T-1 positions."""
        for layer, context in zip(self._layers, self._context, strict=True):
            if context is not None:
                layer.keys, layer.values = context
                if hasattr(layer, "cumulative_length"):  # a sliding-window layer's count
                    layer.cumulative_length = self.width - 1

    def _kwargs(self, given: dict, copies: int) -> dict:
        width, context = self.width, self.width - 1
        out = {}
        for name, value in given.items():
            if name == "attention_mask" and (value is None or isinstance(value, torch.Tensor)):
                rows = self.captured.inputs[min(self.captured.inputs)].hidden.shape[0]
                device = self.captured.inputs[min(self.captured.inputs)].hidden.device
                value = frozen_mask(value, rows, context, copies, device)
            elif name == "position_embeddings" and isinstance(value, tuple | list):
                value = type(value)(_last(t, -2, width, copies) for t in value)
            elif name == "position_ids" and isinstance(value, torch.Tensor):
                value = _last(value, -1, width, copies)
            elif name == "cache_position" and isinstance(value, torch.Tensor):
                value = torch.arange(context, context + copies, device=value.device)
            out[name] = value
        out["past_key_values"] = self.cache
        out["use_cache"] = True
        return out

    def run_from(self, start: int, copies: int) -> torch.Tensor:
        """The final-layer hidden states of `copies` copies of the last position, (rows, copies,
        d), re-run from layer `start`; the cache is reset afterwards."""
        captured = self.captured
        hidden = _last(captured.inputs[start].hidden, -2, self.width, copies)
        self._reset()
        try:
            for index in range(start, len(self.stack.layers)):
                given = captured.inputs.get(index)
                if given is None:  # the model did not run this layer for this batch
                    continue
                kwargs = self._kwargs(given.kwargs, copies)
                hidden = _hidden_of(self.stack.layers[index](hidden, *given.args, **kwargs))
                if index in captured.between:
                    hidden = hidden + _last(captured.between[index], -2, self.width, copies)
        finally:
            self._reset()
        return hidden

    def final_states(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, states) of every copy, replica-major: rows [r*rows, (r+1)*rows) are copy r's
        (the layout of the exact path's replicated batch)."""
        rows, copies, d = hidden.shape
        return self.stack.final_states(hidden.transpose(0, 1).reshape(rows * copies, 1, d))

    def check_reproduces(self, start: int, model_name: str) -> None:
        """With nothing ablated, two copies re-run from `start` must give the intact final
        states (a check, not scoring)."""
        again = self.run_from(start, 2)
        want = self.captured.last[0][:, -1:, :].float()
        for copy in range(2):
            got = again[:, copy : copy + 1].float()
            if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
                gap = float((got - want).abs().max())
                raise FrozenContextError(
                    f"{model_name}: re-running the last prompt position from layer {start} "
                    f"against the intact key/value cache does not reproduce the intact pass (max "
                    f"difference {gap:.3g}), so head_rerun: last_position cannot be used for "
                    "this family; head_rerun: all_positions (the default) re-runs every position"
                )


def _last(value: torch.Tensor, axis: int, width: int, copies: int) -> torch.Tensor:
    """The last position along `axis` (the positions axis, of length `width`), repeated `copies`
    times along it."""
    if value.shape[axis] != width:
        return value  # not per position (broadcast): shared as it is
    index = [slice(None)] * value.dim()
    index[axis] = slice(width - 1, width)
    shape = list(value.shape)
    shape[axis] = copies
    return value[tuple(index)].expand(*shape)
