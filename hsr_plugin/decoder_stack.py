"""The language decoder as a stack that can be re-run from any layer.

Ablating a head in layer l cannot change anything before layer l. So exact head attribution
captures what every decoder layer from the first scored one on receives in one intact pass
(hidden states and every keyword argument: position embeddings, mask, ...), by forward pre-hooks
with kwargs, and then runs only layers l..L-1, the final norm and the output head for each
ablated head. A layer the model skipped in the intact pass (Mllama skips its cross-attention
layers when a batch has no picture) is skipped in the re-run too.

The output head is the model's final norm, its output embeddings, and the final factors its
family applies to the logits: a scalar (Cohere's `logit_scale`, Granite's `logits_scaling`,
MuseGlimmer's `output_multiplier`) and Gemma's tanh soft-capping. Attribution checks on the
first batch that this tail reproduces the model's own logits, which guards against the next
family that adds a factor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hsr_plugin.architecture import (
    LAYER_INDEX,
    AttentionBlock,
    UnsupportedArchitectureError,
    text_config,
)
from hsr_plugin.hooks import hooks_mixin

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = ["DecoderStack", "LayerInputs", "find_decoder_stack", "replicate"]

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_norm", "ln_f")


@dataclass
class LayerInputs:
    """What one decoder layer received in the intact pass."""

    hidden: torch.Tensor
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def replicate(value: Any, rows: int, copies: int) -> Any:
    """`copies` replica-major copies of every per-sequence tensor in `value` (batch of `rows`).

    A per-sequence tensor has `rows` as its first dimension and at least two dimensions; 1-D
    tensors (cache positions) and broadcastable ones (first dimension 1 in a larger batch) are
    shared by every replica as they are.
    """
    if copies == 1:
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == rows:
            return torch.cat([value] * copies)
        return value
    if isinstance(value, tuple | list):
        return type(value)(replicate(v, rows, copies) for v in value)
    if isinstance(value, dict):
        return {k: replicate(v, rows, copies) for k, v in value.items()}
    return value


@dataclass
class DecoderStack:
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    softcap: float | None = None  # Gemma's final_logit_softcapping
    logit_factor: float = 1.0  # scalar applied to the output head's logits before soft-capping
    # other readings of the config's factors, tried in this order by
    # `attribution`'s tail check when `logit_factor` does not reproduce the logits
    factor_candidates: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.layers)

    @contextmanager
    def capture(
        self, owner: HooksMixin, wanted: set[int]
    ) -> Iterator[tuple[dict[int, LayerInputs], list[torch.Tensor]]]:
        """Inside the context, a forward pass of the whole model records the inputs of every
        layer from the first `wanted` one to the last (the re-run of any wanted layer passes
        through all of them), and the last layer's output hidden states."""
        inputs: dict[int, LayerInputs] = {}
        last: list[torch.Tensor] = []

        def make_pre(index: int):
            def hook(_module, args, kwargs):
                kwargs = dict(kwargs)
                if args:
                    hidden, rest = args[0], tuple(args[1:])
                else:
                    hidden, rest = kwargs.pop("hidden_states"), ()
                inputs[index] = LayerInputs(hidden.detach(), rest, kwargs)

            return hook

        def post(_module, _args, output):
            last.append(_hidden_of(output).detach())

        handles = {
            owner.register_hook(self.layers[i], make_pre(i), "forward_pre", with_kwargs=True)
            for i in range(min(wanted), len(self.layers))
        }
        handles.add(owner.register_hook(self.layers[-1], post, "forward"))
        try:
            with hooks_mixin().disable_hooks(keep=handles):
                yield inputs, last
        finally:
            owner.remove_hooks(handles)

    def final_states(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token logits, final-norm state) at the last position of every sequence."""
        state = self.norm(hidden[:, -1:, :])
        logits = self.head(state)
        if self.logit_factor != 1.0:
            logits = logits * self.logit_factor
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits[:, 0].float(), state[:, 0].float()

    def run_from(
        self, start: int, captured: dict[int, LayerInputs], hidden: torch.Tensor, copies: int
    ) -> torch.Tensor:
        """Run layers start..L-1 on `hidden` (the replicated input of layer `start`), skipping
        those the intact pass skipped."""
        rows = captured[start].hidden.shape[0]
        for index in range(start, len(self.layers)):
            given = captured.get(index)
            if given is None:  # the model did not run this layer for this batch
                continue
            args = replicate(given.args, rows, copies)
            kwargs = replicate(given.kwargs, rows, copies)
            hidden = _hidden_of(self.layers[index](hidden, *args, **kwargs))
        return hidden


def find_decoder_stack(model: nn.Module, blocks: list[AttentionBlock]) -> DecoderStack:
    """The decoder-layer list that holds `blocks`, its final norm and the model's output head."""
    match = LAYER_INDEX.search(blocks[0].name)
    list_name = blocks[0].name[: match.start(1) - 1].lstrip(".")
    modules = dict(model.named_modules())
    layers = modules.get(list_name)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(f"{list_name} is not the decoder's list of layers")
    for block in blocks:
        if not block.name.startswith(f"{list_name}.{block.layer}."):
            raise UnsupportedArchitectureError(
                f"{block.name} is not in the decoder layer list {list_name}"
            )
    owner = modules[list_name.rsplit(".", 1)[0]] if "." in list_name else model
    norm = next(
        (
            getattr(owner, n)
            for n in FINAL_NORM_NAMES
            if isinstance(getattr(owner, n, None), nn.Module)
        ),
        None,
    )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if norm is None or head is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: cannot find the final norm next to {list_name} or the output "
            "head, which head attribution runs after the last decoder layer"
        )
    config = text_config(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    factors = _logit_factors(config)
    return DecoderStack(layers, norm, head, softcap, factors[0], factors[1:])


def _logit_factors(config) -> tuple[float, ...]:
    """The scalar the family multiplies its logits by, first, then other readings of it.

    Cohere multiplies by `logit_scale`; `logits_scaling` divides in Granite but multiplies in
    HyperCLOVA X (MuP), so both readings are offered and the tail check keeps the one that
    reproduces the model's logits.
    """
    factor = 1.0
    for name in ("logit_scale", "output_multiplier"):
        value = getattr(config, name, None)
        if isinstance(value, int | float) and value:
            factor *= float(value)
    scaling = getattr(config, "logits_scaling", None)
    if isinstance(scaling, int | float) and scaling and scaling != 1:
        return (factor / float(scaling), factor * float(scaling))
    return (factor,)
