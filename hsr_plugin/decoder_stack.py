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
from llmcompressor.modifiers.utils.hooks import HooksMixin
from torch import nn

from hsr_plugin.architecture import (
    LAYER_INDEX,
    AttentionBlock,
    UnsupportedArchitectureError,
    text_config,
)

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = [
    "Captured",
    "DecoderStack",
    "LayerInputs",
    "find_decoder_stack",
    "replicable",
    "replicate",
]

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
class Captured:
    """What one intact pass recorded: the inputs of every layer from the first scored one on,
    what the model added to the hidden states between two layers (Qwen3-VL's DeepStack adds
    visual features after its first layers), and the last layer's output."""

    inputs: dict[int, LayerInputs] = field(default_factory=dict)
    between: dict[int, torch.Tensor] = field(default_factory=dict)  # after layer i: the addition
    last: list[torch.Tensor] = field(default_factory=list)


@dataclass
class DecoderStack:
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    softcap: float | None = None  # Gemma's final_logit_softcapping
    logit_factor: float = 1.0  # scalar applied to the output head's logits before soft-capping
    # other readings of the config's final factors, as (factor, softcap), tried in this order by
    # `attribution`'s tail check when the first does not reproduce the logits (a VLM wrapper may
    # skip a factor its text config names: Aya Vision's logit_scale, Gemma3's soft-capping)
    readings: tuple[tuple[float, float | None], ...] = ()

    def __len__(self) -> int:
        return len(self.layers)

    @contextmanager
    def capture(self, owner: HooksMixin, wanted: set[int]) -> Iterator[Captured]:
        """Inside the context, a forward pass of the whole model records the inputs of every
        layer from the first `wanted` one to the last (the re-run of any wanted layer passes
        through all of them), what was added between consecutive layers, and the last layer's
        output hidden states."""
        captured = Captured()
        outputs: dict[int, torch.Tensor] = {}
        first = min(wanted)

        def make_pre(index: int):
            def hook(_module, args, kwargs):
                kwargs = dict(kwargs)
                if args:
                    hidden, rest = args[0], tuple(args[1:])
                else:
                    hidden, rest = kwargs.pop("hidden_states"), ()
                hidden = hidden.detach()
                previous = max((i for i in outputs if i < index), default=None)
                if previous is not None and not torch.equal(hidden, outputs[previous]):
                    captured.between[previous] = hidden - outputs[previous]
                outputs.clear()
                captured.inputs[index] = LayerInputs(hidden, rest, kwargs)

            return hook

        def make_post(index: int):
            def hook(_module, _args, output):
                outputs[index] = _hidden_of(output).detach()
                if index == len(self.layers) - 1:
                    captured.last.append(outputs[index])

            return hook

        handles = set()
        for i in range(first, len(self.layers)):
            handles.add(
                owner.register_hook(self.layers[i], make_pre(i), "forward_pre", with_kwargs=True)
            )
            handles.add(owner.register_hook(self.layers[i], make_post(i), "forward"))
        try:
            with HooksMixin.disable_hooks(keep=handles):
                yield captured
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
        self, start: int, captured: Captured, hidden: torch.Tensor, copies: int
    ) -> torch.Tensor:
        """Run layers start..L-1 on `hidden` (the replicated input of layer `start`), skipping
        those the intact pass skipped and adding what the model added between layers."""
        rows = captured.inputs[start].hidden.shape[0]
        for index in range(start, len(self.layers)):
            given = captured.inputs.get(index)
            if given is None:  # the model did not run this layer for this batch
                continue
            args = replicate(given.args, rows, copies)
            kwargs = replicate(given.kwargs, rows, copies)
            hidden = _hidden_of(self.layers[index](hidden, *args, **kwargs))
            if index in captured.between:
                hidden = hidden + replicate(captured.between[index], rows, copies)
        return hidden


def replicable(captured: Captured, rows: int) -> bool:
    """Whether every tensor the layers received is per sequence (first dimension `rows`) or
    shared (first dimension 1, or 1-D), so that one pass can hold several replicas of the batch.
    Mllama's cross-attention states, for one, are per picture tile: such a batch runs one
    ablated head per pass."""

    def ok(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return value.dim() < 2 or value.shape[0] in (rows, 1)
        if isinstance(value, tuple | list):
            return all(ok(v) for v in value)
        if isinstance(value, dict):
            return all(ok(v) for v in value.values())
        return True

    return all(ok(given.args) and ok(given.kwargs) for given in captured.inputs.values())


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
    softcap = getattr(config, "final_logit_softcapping", None) or None
    readings = [(f, softcap) for f in _logit_factors(config)]
    readings += [(f, None) for f in (*_logit_factors(config), 1.0) if softcap]
    readings += [(1.0, softcap), (1.0, None)]
    unique = list(dict.fromkeys(readings))
    return DecoderStack(layers, norm, head, unique[0][1], unique[0][0], tuple(unique[1:]))


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
