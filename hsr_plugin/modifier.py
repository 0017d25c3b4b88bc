"""HSRModifier: Hierarchical Safety Realignment as an llm-compressor modifier.

Lifecycle under `oneshot` (llm-compressor 0.14):
- `on_initialize` runs for every modifier before any data flows and before any pruning. HSR
  validates its order and inputs there, then scores on the DENSE model: head attribution on
  the safety prompts, and weight importance on the safety and utility responses, for the layers
  that hold a selected head only. It keeps the candidate masks, the head slices and a CPU
  snapshot of those layers' dense q/k/v/o weights. No pipeline has placed the model yet at
  that point, so HSR runs these passes on the execution device itself
  (`hsr_plugin.placement`) and hands the model back as it found it.
- HSR needs no calibration data of its own (`datafree` pipeline). At `on_calibration_end`,
  after the pruning modifiers before it have ended, it reads the pruned positions off the model
  and copies the dense values back on R = candidates ∩ head slices ∩ pruned.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
from compressed_tensors.utils import align_module_device, match_named_modules
from llmcompressor.core import Event, State, active_session
from llmcompressor.modifiers import Modifier
from llmcompressor.utils.helpers import DisableQuantization, eval_context
from loguru import logger
from pydantic import Field, PrivateAttr, field_validator, model_validator
from torch import nn

from hsr_eval.common import language_sparsity_counts, write_json_atomic
from hsr_plugin.architecture import AttentionBlock, find_attention_blocks, find_mlp_blocks
from hsr_plugin.attribution import (
    AttributionCost,
    HeadScore,
    first_order_unit_scores,
    score_heads,
)
from hsr_plugin.calibration import (
    CalibrationSample,
    load_conversations,
    load_processor,
    render_samples,
)
from hsr_plugin.dense_source import DenseSnapshot, DenseSource, SafetensorsDenseSource
from hsr_plugin.errors import InvalidInputError, StageOrderError
from hsr_plugin.head_scores import rank_heads, select_top_heads
from hsr_plugin.neuron_scoring import (
    collect_statistics,
    importance_scores,
    mean_weight_gradients,
)
from hsr_plugin.placement import execution_placement
from hsr_plugin.report import build_report, log_summary
from hsr_plugin.restore import (
    RestoreStats,
    apply_restoration,
    budget_masks,
    count_pruned,
    parse_nm,
    restoration_mask,
    restore_gain_mask,
)
from hsr_plugin.selection import stacked_candidate_mask
from hsr_plugin.slicing import band_mask, mlp_channel_slices

__all__ = ["HSRModifier"]

DEFAULT_IGNORE = [
    "re:.*lm_head",
    "re:.*vision_tower.*",
    "re:.*vision_model.*",
    "re:.*multi_modal_projector.*",
    "re:.*visual.*",
]


class _Plan:
    """What restoration needs for one matrix, computed on the dense model. `candidates` is None
    for `restore_gain`, which picks them on the pruned model."""

    __slots__ = ("module", "candidates", "slices", "priority", "unit")

    def __init__(self, module, candidates, slices, priority, unit="heads"):
        self.module, self.candidates, self.slices = module, candidates, slices
        self.priority, self.unit = priority, unit


class HSRModifier(Modifier):
    """
    Restore a few safety-critical pruned weights inside the top safety heads (HSR, Li et al.,
    ACL 2025 Findings). Put it after the sparsity stage and before any quantization:

    ```yaml
    hsr_stage:
      hsr_modifiers:
        HSRModifier:
          num_heads: 8
    ```

    :param num_heads: top-h heads to realign, ranked over all layers (paper: 10 or 4)
    :param head_score: `ships_subspace` (principal angles of last-token states, the paper's
        dataset-level Ships), `ships_kl` (mean next-token KL), `reference` (the authors'
        code: angle on hidden feature 0, one score per KV group), or `attribution`
        (experimental, opt-in: the first-order change of the refusal NLL when a head's output
        is zeroed; one forward and one backward pass per batch instead of one pass per head)
    :param subspace_rank: r, the rank of the subspaces compared by `ships_subspace`
    :param ablation_eps: factor that ablates a head's query and output
    :param neuron_score: weight importance on the dense model: `wanda`, `sparsegpt` or `snip`
        (the paper's neuron level); or `restore_gain` (opt-in, beyond the paper): after
        pruning, rank the pruned weights of the selected units by the first-order drop of the
        refusal NLL their restoration brings on the pruned model, dropping those that would
        raise the utility NLL by more than `utility_tolerance`; `safety_top`, `utility_top` and
        `utility_max` do not apply to it
    :param safety_top: q, the top fraction of weights by safety importance
    :param utility_top: p, weights in the top-p by utility importance are excluded
    :param utility_max: p_max, candidates must lie in the top-p_max by utility importance
    :param head_slicing: `exact` (each head's own rows/columns) or `reference` (the authors'
        input-column bands for q/k/v and the whole o_proj)
    :param safety_data: harmful requests with refusals: a bundled set name, a local JSONL or
        VLGuard `train.json[:split]` path, or a Hugging Face dataset id (`id[:split]`)
    :param utility_data: benign requests with helpful answers, same forms
    :param num_samples: samples drawn from each set (seeded)
    :param max_seq_length: longest rendered conversation, in tokens
    :param batch_size: prompts (or conversations) per forward pass of head attribution and of
        the Wanda/SparseGPT statistics (text only; samples with images run one at a time)
    :param attribution_memory_gb: activation memory one exact attribution pass may use, which
        sets how many ablated heads share a pass; default: a quarter of the accelerator's free
        memory, or 128 MiB on the CPU
    :param offload_statistics: accumulate the Wanda/SparseGPT/SNIP statistics on the CPU
        instead of the execution device (for very large layers, like SparseGPT's
        `offload_hessians`)
    :param seed: seed for sampling the calibration sets
    :param targets: modules (decoder layers) whose self-attention may be realigned
    :param ignore: modules never touched (vision tower, projector, lm_head by default)
    :param dense_model: optional local checkpoint of the dense model to read dense weights
        from (safetensors, lazily) instead of snapshotting them before pruning
    :param processor: processor or tokenizer path; default: the model's own path
    :param report_path: where to write the JSON report (always kept as `modifier.report`)
    :param preserve_nm: e.g. '2:4': drop restorations that would break that N:M pattern
    :param max_restored_per_10k: a budget: restore at most this many weights per 10,000
        language parameters, the ones with the highest safety importance first (ties: module
        order, then position); with it, two settings compare at the same restored count
    :param units: what is realigned: `['heads']` (the paper) or `['heads', 'mlp']` (opt-in: also
        the top MLP intermediate channels, ranked by first-order attribution on the safety
        prompts; rows of gate/up and columns of down)
    :param num_mlp_channels: MLP channels realigned with `units: ['heads', 'mlp']`, ranked over
        all targeted layers
    :param utility_tolerance: `restore_gain` only: the largest first-order rise of the utility
        NLL a restored weight may cause
    :param rounds: `restore_gain` only: spend the budget in this many chunks, re-scoring the
        gradients after each (greedy); needs `max_restored_per_10k`
    """

    num_heads: int = Field(default=10, ge=1)
    head_score: Literal["ships_subspace", "ships_kl", "reference", "attribution"] = "ships_subspace"
    subspace_rank: int = Field(default=1, ge=1)
    ablation_eps: float = Field(default=1e-5, gt=0.0, lt=1.0)
    neuron_score: Literal["wanda", "sparsegpt", "snip", "restore_gain"] = "wanda"
    safety_top: float = Field(default=0.5, gt=0.0, le=1.0)
    utility_top: float = Field(default=0.5, ge=0.0, le=1.0)
    utility_max: float = Field(default=0.7, ge=0.0, le=1.0)
    head_slicing: Literal["exact", "reference"] = "exact"
    safety_data: str = "hsr-safety-mini"
    utility_data: str = "hsr-utility-mini"
    num_samples: int = Field(default=128, ge=1)
    max_seq_length: int = Field(default=512, ge=8)
    batch_size: int = Field(default=8, ge=1)
    attribution_memory_gb: float | None = Field(default=None, gt=0.0)
    offload_statistics: bool = False
    seed: int = 0
    targets: str | list[str] = Field(default_factory=lambda: [r"re:.*layers\.\d+$"])
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    dense_model: str | None = None
    processor: str | None = None
    report_path: str | None = None
    preserve_nm: str | None = None
    max_restored_per_10k: float | None = Field(default=None, ge=0.0)
    units: list[Literal["heads", "mlp"]] = Field(default_factory=lambda: ["heads"])
    num_mlp_channels: int = Field(default=64, ge=1)
    utility_tolerance: float = Field(default=0.0, ge=0.0)
    rounds: int = Field(default=1, ge=1)

    _plans: dict[str, _Plan] = PrivateAttr(default_factory=dict)
    # fused projections: the row blocks ([q; k; v]) that are ranked as separate matrices
    _row_blocks: dict[str, tuple[tuple[int, int], ...]] = PrivateAttr(default_factory=dict)
    _dense: DenseSource | None = PrivateAttr(default=None)
    _earlier_pruning: list[Modifier] = PrivateAttr(default_factory=list)
    _head_scores: list[HeadScore] = PrivateAttr(default_factory=list)
    _selected: list[tuple[int, int]] = PrivateAttr(default_factory=list)
    _timing: dict[str, float] = PrivateAttr(default_factory=dict)
    _scoring: dict[str, Any] = PrivateAttr(default_factory=dict)
    _samples: tuple | None = PrivateAttr(default=None)
    _given_head_scores: list[HeadScore] | None = PrivateAttr(default=None)
    _mlp_selected: list[tuple[int, int, float]] = PrivateAttr(default_factory=list)
    _model_info: dict[str, Any] = PrivateAttr(default_factory=dict)
    _restored: bool = PrivateAttr(default=False)
    _report: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def report(self) -> dict[str, Any] | None:
        """The HSR report (schema version 1), once weights have been restored."""
        return self._report

    SCORING_FIELDS: ClassVar[tuple[str, ...]] = (
        "head_score",
        "subspace_rank",
        "ablation_eps",
        "safety_data",
        "num_samples",
        "max_seq_length",
        "batch_size",
        "seed",
        "targets",
        "ignore",
        "processor",
    )

    def scoring_key(self) -> str:
        """The fields that decide the head scores: equal keys, equal scores (same model)."""
        return repr([(name, getattr(self, name)) for name in self.SCORING_FIELDS])

    def use_head_scores(self, scores: list[HeadScore]) -> None:
        """Skip head attribution and use `scores`, from an earlier run on the same dense model
        with the same `scoring_key()` (how `hsr sweep` scores heads once per setting)."""
        self._given_head_scores = list(scores)

    @field_validator("targets", mode="before")
    @classmethod
    def _listify_targets(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("preserve_nm")
    @classmethod
    def _check_nm(cls, value):
        parse_nm(value)
        return value

    @field_validator("safety_data", "utility_data")
    @classmethod
    def _non_empty(cls, value: str):
        if not value or not value.strip():
            raise InvalidInputError(
                "calibration data must name a bundled set, a path or a dataset id"
            )
        return value

    @field_validator("units")
    @classmethod
    def _check_units(cls, value):
        if "heads" not in value:
            raise InvalidInputError("units must include 'heads': ['heads'] or ['heads', 'mlp']")
        return list(dict.fromkeys(value))

    # field -> (the mode that uses it, a test of whether the chosen settings are that mode)
    MODE_FIELDS: ClassVar[dict[str, tuple[str, Any]]] = {
        "subspace_rank": ("head_score: ships_subspace", lambda m: m.head_score == "ships_subspace"),
        "ablation_eps": (
            "an ablating head score (ships_subspace, ships_kl, reference)",
            lambda m: m.head_score != "attribution",
        ),
        "safety_top": ("the paper's neuron level", lambda m: m.neuron_score != "restore_gain"),
        "utility_top": ("the paper's neuron level", lambda m: m.neuron_score != "restore_gain"),
        "utility_max": ("the paper's neuron level", lambda m: m.neuron_score != "restore_gain"),
        "utility_tolerance": (
            "neuron_score: restore_gain",
            lambda m: m.neuron_score == "restore_gain",
        ),
        "num_mlp_channels": ("units: [heads, mlp]", lambda m: "mlp" in m.units),
    }

    @model_validator(mode="after")
    def _check_fields_mean_something(self):
        for name, (mode, applies) in self.MODE_FIELDS.items():
            default = type(self).model_fields[name].default
            if getattr(self, name) != default and not applies(self):
                raise InvalidInputError(
                    f"{name}={getattr(self, name)!r} has no effect here: only {mode} uses it "
                    f"(head_score={self.head_score}, neuron_score={self.neuron_score}, "
                    f"units={self.units}); remove it or choose that mode"
                )
        return self

    @model_validator(mode="after")
    def _check_rounds(self):
        if self.rounds > 1 and (
            self.neuron_score != "restore_gain" or self.max_restored_per_10k is None
        ):
            raise InvalidInputError(
                f"rounds={self.rounds} re-scores between chunks of the budget: it needs "
                "neuron_score: restore_gain and max_restored_per_10k"
            )
        return self

    @model_validator(mode="after")
    def _check_fractions(self):
        if self.utility_top > self.utility_max:
            raise InvalidInputError(
                f"utility_top (p={self.utility_top}) must not exceed utility_max "
                f"(p_max={self.utility_max}): "
                "candidates are (top_q safety ∩ top_pmax utility) minus top_p utility"
            )
        return self

    # ------------------------------------------------------------------ lifecycle
    def on_initialize(self, state: State, **kwargs) -> bool:
        model = state.model
        self._earlier_pruning = self._check_recipe_order()
        blocks = self._find_blocks(model)
        if self.num_heads > sum(len(self._units(b)) for b in blocks):
            raise InvalidInputError(
                f"num_heads={self.num_heads} exceeds the "
                f"{sum(len(self._units(b)) for b in blocks)} heads scored"
            )
        if "mlp" in self.units:  # refused before any scoring if the layers have no such MLP
            find_mlp_blocks(model, layers=[b.layer for b in blocks])
        for block in blocks:
            for _, name, module in block.projections():
                with align_module_device(module):
                    _check_finite(module.weight, f"weight of {name}")
        if self.dense_model is not None:
            self._dense = SafetensorsDenseSource(self.dense_model)
            self._dense.check({name: mod for b in blocks for _, name, mod in b.projections()})

        start = time.perf_counter()
        processor = load_processor(self._model_path(model), self.processor)
        safety = self._render(self.safety_data, processor, "safety_data")
        utility = self._render(self.utility_data, processor, "utility_data")
        self._timing["data"] = time.perf_counter() - start
        self._model_info = {
            "class": type(model).__name__,
            "name_or_path": self._model_path(model),
            "attention_blocks": len(blocks),
            "num_heads": blocks[0].num_heads,
            "num_kv_heads": blocks[0].num_kv_heads,
            "head_dim": blocks[0].head_dim,
            "attention_layout": blocks[0].layout,
        }
        unsliced = [name for b in blocks for name in b.unsliced]
        if unsliced:
            # MLA's shared low-rank down-projections serve every head: HSR leaves them as pruned
            self._model_info["unsliced_projections"] = unsliced
            logger.info(
                f"HSR: {len(unsliced)} shared projections belong to no head and stay as pruned "
                f"({unsliced[0]}, ...)"
            )
        pad_id = getattr(getattr(processor, "tokenizer", processor), "pad_token_id", None) or 0
        # Each pass enters HooksMixin.disable_hooks itself, keeping only HSR's own hooks (its
        # context manager does not nest: leaving an inner one would re-enable everyone's).
        with (
            torch.no_grad(),
            DisableQuantization(model),
            eval_context(model),
            execution_placement(model) as placed,
        ):
            self._scoring = {"device": str(placed.device), "placement": placed.reason}
            self._score_and_plan(model, blocks, safety, utility, pad_id, placed.device)
        return True

    def on_calibration_end(self, state: State, event: Event, **kwargs):
        if not self._restored:
            self._restore(state.model)

    def on_finalize(self, state: State, **kwargs) -> bool:
        if not self._restored:
            raise StageOrderError(
                "HSRModifier was finalized before it restored any weights: its calibration never "
                "ended. Run it with oneshot after the sparsity stage."
            )
        self.remove_hooks()
        self._plans, self._dense = {}, None
        return True

    # ------------------------------------------------------------------ steps
    def _check_recipe_order(self) -> list[Modifier]:
        from llmcompressor.modifiers.quantization.quantization.mixin import QuantizationMixin

        recipe = active_session().lifecycle.recipe
        modifiers = list(getattr(recipe, "modifiers", None) or [])
        index = next((i for i, m in enumerate(modifiers) if m is self), None)
        earlier = modifiers[:index] if index is not None else []
        quant = [type(m).__name__ for m in earlier if isinstance(m, QuantizationMixin)]
        if quant:
            raise InvalidInputError(
                f"HSRModifier comes after {quant[0]}: put HSR after the sparsity stage and BEFORE "
                "quantization, so that it restores dense weights before they are quantized"
            )
        pruning = [m for m in earlier if _is_pruning(m)]
        if not pruning:
            found = ", ".join(type(m).__name__ for m in earlier) or "nothing"
            raise InvalidInputError(
                f"HSRModifier needs a pruning modifier before it in the recipe (found {found}). "
                "Put HSR after the sparsity stage (e.g. WandaPruningModifier or SparseGPTModifier) "
                "and before quantization."
            )
        return pruning

    def _find_blocks(self, model) -> list[AttentionBlock]:
        targeted = [name for name, _ in match_named_modules(model, self.targets, self.ignore)]
        if not targeted:
            raise InvalidInputError(
                f"HSRModifier targets {self.targets} match no module of {type(model).__name__} "
                f"(ignore={self.ignore})"
            )
        blocks = find_attention_blocks(model, within=targeted)
        ignored = (
            {name for name, _ in match_named_modules(model, self.ignore)} if self.ignore else set()
        )
        kept = [
            b
            for b in blocks
            if b.name not in ignored and not any(name in ignored for _, name, _ in b.projections())
        ]
        if not kept:
            raise InvalidInputError(
                f"HSRModifier: every self-attention block is ignored by {self.ignore}"
            )
        return kept

    def _units(self, block: AttentionBlock) -> range:
        return range(block.num_kv_heads if self.head_score == "reference" else block.num_heads)

    @staticmethod
    def _model_path(model) -> str:
        return getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")

    def _render(self, spec: str, processor, field: str) -> list[CalibrationSample]:
        conversations = load_conversations(spec, self.num_samples, self.seed)
        samples = render_samples(conversations, processor, self.max_seq_length)
        if not any(bool(s.response_mask.any()) for s in samples):
            raise InvalidInputError(f"{field}={spec!r}: no response tokens to score")
        logger.info(f"HSR {field}: {len(samples)} samples from {spec}")
        return samples

    def _score_heads(self, model, blocks, safety, pad_id, device, cost) -> list[HeadScore]:
        memory = (
            None
            if self.attribution_memory_gb is None
            else int(self.attribution_memory_gb * (1 << 30))
        )
        return score_heads(
            model,
            blocks,
            safety,
            self.head_score,
            self.ablation_eps,
            self.subspace_rank,
            self.batch_size,
            pad_id,
            hooks=self,
            device=device,
            memory_budget=memory,
            cost=cost,
        )

    def _score_and_plan(self, model, blocks, safety, utility, pad_id: int, device) -> None:
        start = time.perf_counter()
        cost = AttributionCost()
        if self._given_head_scores is not None:
            logger.info("HSR reuses the head scores of an earlier run with the same settings")
            self._head_scores = self._given_head_scores
        else:
            self._head_scores = self._score_heads(model, blocks, safety, pad_id, device, cost)
        self._scoring["head_scoring_forward_equivalents"] = round(cost.forward_equivalents, 4)
        ranked = rank_heads({(s.layer, s.head): s.score for s in self._head_scores})
        self._selected = select_top_heads(ranked, self.num_heads)
        self._timing["head_scoring"] = time.perf_counter() - start

        by_layer: dict[int, list[tuple[int, int]]] = {}
        kv_of = {(s.layer, s.head): s.kv_group for s in self._head_scores}
        for layer, head in self._selected:
            by_layer.setdefault(layer, []).append((head, kv_of[(layer, head)]))
        slices: dict[str, tuple[nn.Linear, torch.Tensor, str]] = {}
        for block in (b for b in blocks if b.layer in by_layer):
            for sliced in block.sliced_projections():
                module = sliced.module
                mask = band_mask(
                    (module.out_features, module.in_features),
                    sliced.axis,
                    sliced.bands,
                    by_layer[block.layer],
                    block.num_heads,
                    self.head_slicing,
                )
                slices[sliced.name] = (module, mask, "heads")
                if sliced.row_blocks:
                    self._row_blocks[sliced.name] = sliced.row_blocks
        if "mlp" in self.units:
            start = time.perf_counter()
            slices.update(self._plan_mlp(model, blocks, safety, pad_id, device))
            self._timing["mlp_scoring"] = time.perf_counter() - start
        modules = {name: module for name, (module, _, _) in slices.items()}

        start = time.perf_counter()
        if self.neuron_score == "restore_gain":
            # candidates are chosen after pruning, on the pruned model (see _restore_gain)
            self._samples = (safety, utility)
            for name, (module, mask, unit) in slices.items():
                self._plans[name] = _Plan(module, None, mask, None, unit)
        else:
            self._plan_candidates(model, slices, safety, utility, device, pad_id)
        self._timing["neuron_scoring"] = time.perf_counter() - start
        if self._dense is None:
            start = time.perf_counter()
            self._dense = DenseSnapshot(modules)
            self._timing["dense_snapshot"] = time.perf_counter() - start

    def _plan_mlp(self, model, blocks, safety, pad_id, device) -> dict:
        """Rank MLP channels of the targeted layers (first order) and slice the top ones."""
        mlps = find_mlp_blocks(model, layers=[b.layer for b in blocks])
        total = sum(m.intermediate for m in mlps)
        if self.num_mlp_channels > total:
            raise InvalidInputError(
                f"num_mlp_channels={self.num_mlp_channels} exceeds the {total} MLP channels of "
                "the targeted layers"
            )
        for mlp in mlps:
            for _, name, module in mlp.projections():
                with align_module_device(module):
                    _check_finite(module.weight, f"weight of {name}")
        if self._dense is not None:
            self._dense.check({name: m for mlp in mlps for _, name, m in mlp.projections()})
        sites = {mlp.layer: (mlp.projection("down"), mlp.intermediate, 1) for mlp in mlps}
        scores = first_order_unit_scores(
            model, sites, safety, self.batch_size, pad_id, device, self, what="MLP channel scores"
        )
        ranked = rank_heads(
            {(layer, c): float(v) for layer, t in scores.items() for c, v in enumerate(t)}
        )
        chosen = select_top_heads(ranked, self.num_mlp_channels)
        self._mlp_selected = [(layer, c, dict(ranked)[(layer, c)]) for layer, c in chosen]
        channels: dict[int, list[int]] = {}
        for layer, channel in chosen:
            channels.setdefault(layer, []).append(channel)
        planned = {}
        for mlp in (m for m in mlps if m.layer in channels):
            for short, name, module in mlp.projections():
                shape = (module.out_features, module.in_features)
                planned[name] = (
                    module,
                    mlp_channel_slices(shape, short, channels[mlp.layer]),
                    "mlp",
                )
        return planned

    def _plan_candidates(self, model, slices, safety, utility, device, pad_id: int) -> None:
        """The paper's neuron level: candidates from safety and utility importance (dense)."""
        modules = {name: module for name, (module, _, _) in slices.items()}
        stats_device = "cpu" if self.offload_statistics else device
        stats_s, stats_u = (
            collect_statistics(
                model,
                modules,
                samples,
                self.neuron_score,
                f"HSR {which} importance",
                hooks=self,
                device=device,
                stats_device=stats_device,
                batch_size=self.batch_size,
                pad_id=pad_id,
            )
            for which, samples in (("safety", safety), ("utility", utility))
        )
        # the safety importance ranks restorations only for N:M and for the budget
        ranked = self.preserve_nm is not None or self.max_restored_per_10k is not None
        for name, (module, mask, unit) in slices.items():
            with align_module_device(module):
                weight = module.weight.detach()
                # each matrix's statistics are freed as soon as its mask is built
                i_s = importance_scores(self.neuron_score, stats_s.pop(name), weight)
                i_u = importance_scores(self.neuron_score, stats_u.pop(name), weight)
            candidates = stacked_candidate_mask(
                i_s, i_u, self.safety_top, self.utility_top, self.utility_max,
                self._row_blocks.get(name, ()),
            )  # fmt: skip
            priority = i_s.float().cpu() if ranked else None
            self._plans[name] = _Plan(module, candidates.cpu(), mask, priority, unit)

    def _restore(self, model) -> None:
        unfinished = [type(m).__name__ for m in self._earlier_pruning if not m.ended_]
        if unfinished:
            raise StageOrderError(
                f"HSRModifier would restore weights before {unfinished[0]} has finished pruning. "
                "Put HSR after the sparsity stage and before quantization, and run oneshot with "
                "the default pipeline ('independent')."
            )
        start = time.perf_counter()
        language_params, pruned_params = _language_counts(model)
        dense = {name: self._dense.get(name) for name in self._plans}
        for name, weight in dense.items():
            _check_finite(weight, f"dense weight of {name}")
        pruned_in_targets = sum(
            count_pruned(plan.module, dense[name]) for name, plan in self._plans.items()
        )
        if pruned_in_targets == 0:
            earlier = ", ".join(type(m).__name__ for m in self._earlier_pruning)
            raise StageOrderError(
                f"HSRModifier found no pruned weights in the attention of the selected heads' "
                f"layers: {earlier} pruned nothing there. Check its targets and sparsity, and "
                "give it calibration data (the 'datafree' pipeline runs none)."
            )
        cap = None
        if self.max_restored_per_10k is not None:
            cap = math.floor(self.max_restored_per_10k * language_params / 1e4 + 1e-9)
            self._scoring["budget"] = cap
        if self.neuron_score == "restore_gain":
            stats = self._restore_gain(model, dense, cap)
        else:
            stats = self._restore_candidates(dense, cap)
        rows = [
            {**stats[name].as_report(), "unit": plan.unit} for name, plan in self._plans.items()
        ]
        if not any(row["restored"] for row in rows):
            if self.neuron_score == "restore_gain":
                advice = (
                    "no pruned weight of the selected units would lower the refusal NLL without "
                    f"raising the utility NLL by more than utility_tolerance "
                    f"({self.utility_tolerance}). Raise utility_tolerance or select more heads."
                )
            else:
                advice = (
                    "no pruned weight of the selected heads is a candidate. Raise safety_top "
                    f"(q={self.safety_top}), lower utility_top (p={self.utility_top}) or raise "
                    f"utility_max (p_max={self.utility_max}), or select more heads (num_heads)."
                )
            logger.warning(f"HSR restored no weights: {advice}")
        self._timing["restore"] = time.perf_counter() - start
        self._restored = True
        self._report = build_report(
            config=self.model_dump(mode="json"),
            model=self._model_info,
            pruned_by=[type(m).__name__ for m in self._earlier_pruning],
            head_scores=self._head_scores,
            selected=self._selected,
            rows=rows,
            language_params=language_params,
            pruned_params=pruned_params,
            timing=self._timing,
            scoring=self._scoring,
            mlp_selected=self._mlp_selected,
        )
        self._plans, self._dense, self._samples = {}, None, None  # freed once restored
        if self.report_path:
            write_json_atomic(self.report_path, self._report)
            logger.info(f"HSR report written to {self.report_path}")
        log_summary(self._report)

    def _restore_candidates(self, dense, cap: int | None) -> dict[str, RestoreStats]:
        nm = parse_nm(self.preserve_nm)
        masks, stats = {}, {}
        for name, plan in self._plans.items():
            masks[name], stats[name] = restoration_mask(
                name, plan.module, dense[name], plan.candidates, plan.slices, nm, plan.priority
            )
        if cap is not None:
            masks = budget_masks(masks, {n: p.priority for n, p in self._plans.items()}, cap)
            stats = {n: replace(s, restored=int(masks[n].sum())) for n, s in stats.items()}
        for name, plan in self._plans.items():
            apply_restoration(plan.module, dense[name], masks[name])
        return stats

    def _restore_gain(self, model, dense, cap: int | None) -> dict[str, RestoreStats]:
        """Candidates scored on the PRUNED model by first-order safety gain; `rounds` re-scores."""
        safety, utility = self._samples
        modules = {name: plan.module for name, plan in self._plans.items()}
        nm = parse_nm(self.preserve_nm)
        restored = {name: 0 for name in self._plans}
        first: dict[str, RestoreStats] = {}
        remaining = cap
        with (
            DisableQuantization(model),
            eval_context(model),
            execution_placement(model) as placed,
        ):
            for round_index in range(self.rounds):
                grads = [
                    mean_weight_gradients(
                        model,
                        modules,
                        samples,
                        f"HSR restore_gain {which} gradients (round {round_index + 1})",
                        device=placed.device,
                        hooks=self,
                        stats_device="cpu" if self.offload_statistics else placed.device,
                    )
                    for which, samples in (("safety", safety), ("utility", utility))
                ]
                masks, gains = {}, {}
                for name, plan in self._plans.items():
                    masks[name], gains[name], stats = restore_gain_mask(
                        name,
                        plan.module,
                        dense[name],
                        plan.slices,
                        grads[0].pop(name),
                        grads[1].pop(name),
                        self.utility_tolerance,
                        nm,
                    )
                    first.setdefault(name, stats)
                if remaining is not None:
                    share = math.ceil(remaining / (self.rounds - round_index))
                    masks = budget_masks(masks, gains, share)
                for name, plan in self._plans.items():
                    apply_restoration(plan.module, dense[name], masks[name])
                    restored[name] += int(masks[name].sum())
                done = sum(int(m.sum()) for m in masks.values())
                if remaining is not None:
                    remaining -= done
                if done == 0 or remaining == 0:
                    break
        return {name: replace(first[name], restored=restored[name]) for name in self._plans}


def _is_pruning(modifier: Modifier) -> bool:
    """Modifiers that zero weights: Wanda and SparseGPT (SparsityModifierBase), magnitude
    pruning, and the sweep's saved pruning (PrunedWeightsModifier). ConstantPruningModifier only
    keeps existing zeros, so it is not one."""
    from llmcompressor.modifiers.pruning import MagnitudePruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    from hsr_plugin.pruned_base import PrunedWeightsModifier

    return isinstance(
        modifier, SparsityModifierBase | MagnitudePruningModifier | PrunedWeightsModifier
    )


@torch.no_grad()
def _language_counts(model) -> tuple[int, int]:
    """(weights, zeros) of the language decoder's Linear layers (lm_head and vision excluded)."""

    def weights():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                with align_module_device(module):
                    yield f"{name}.weight", module.weight

    zeros, params = language_sparsity_counts(weights())
    return params, zeros


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    """One clear error naming the tensor, before NaN or inf reach scores or the output."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InvalidInputError(f"HSRModifier: the {what} has {bad} non-finite values (NaN or inf)")


def _register() -> None:
    """Make `HSRModifier` a name that llm-compressor recipes can use (YAML or Python)."""
    from llmcompressor.modifiers.factory import ModifierFactory

    ModifierFactory.refresh()
    for registry in ("_main_registry", "_experimental_registry"):
        if "HSRModifier" in getattr(ModifierFactory, registry, {}):
            raise StageOrderError(
                "llm-compressor already ships a modifier named HSRModifier; refusing to override it"
            )
    ModifierFactory.register("HSRModifier", HSRModifier)


_register()
