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

The modifier is the lifecycle only; its stages are chosen once from the fields:
`recipe_checks` (order, targets), a head scorer (`head_score_stages`), unit planners (`unit_plans`),
a restoration policy per neuron level (`restoration_policies`) and the report (`report`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from compressed_tensors.utils import align_module_device
from llmcompressor.core import Event, State
from llmcompressor.modifiers import Modifier
from llmcompressor.utils.helpers import DisableQuantization, eval_context
from loguru import logger
from pydantic import PrivateAttr

from hsr_eval.files import write_json_atomic
from hsr_plugin.calibration import CalibrationSample, load_processor, render_samples
from hsr_plugin.checks import language_counts, require_finite
from hsr_plugin.conversations import load_conversations
from hsr_plugin.dense_source import DenseSnapshot, DenseSource, SafetensorsDenseSource
from hsr_plugin.distributed import Collective, current_collective
from hsr_plugin.errors import InvalidInputError, StageOrderError
from hsr_plugin.head_score_math import rank_heads, select_top_heads
from hsr_plugin.head_score_stages import HeadScorer
from hsr_plugin.mlp_blocks import find_mlp_blocks
from hsr_plugin.models import model_name_or_path
from hsr_plugin.placement import execution_placement
from hsr_plugin.recipe_checks import earlier_pruning, require_pruning_ended, target_blocks
from hsr_plugin.registration import register_modifier
from hsr_plugin.report import build_report, log_summary, model_info
from hsr_plugin.restoration_policies import RestorationPolicy
from hsr_plugin.restore import count_pruned
from hsr_plugin.score_records import AttributionCost, HeadScore
from hsr_plugin.scoring_context import ScoringContext
from hsr_plugin.settings import HSRSettings
from hsr_plugin.unit_plans import UnitPlan, plan_heads, plan_mlp_channels

__all__ = ["HSRModifier"]


@dataclass
class RunState:
    """What one run keeps between `on_initialize` and the restoration, freed once restored."""

    earlier_pruning: list[Modifier] = field(default_factory=list)
    plans: dict[str, UnitPlan] = field(default_factory=dict)
    dense: DenseSource | None = None
    policy: RestorationPolicy | None = None
    head_scores: list[HeadScore] = field(default_factory=list)
    selected: list[tuple[int, int]] = field(default_factory=list)
    mlp_selected: list[tuple[int, int, float]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    scoring: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    collective: Collective | None = None  # the ranks, under torchrun


class HSRModifier(HSRSettings):
    """
    Restore a few safety-critical pruned weights inside the top safety heads (HSR, Li et al.,
    ACL 2025 Findings). Put it after the sparsity stage and before any quantization:

    ```yaml
    hsr_stage:
      hsr_modifiers:
        HSRModifier:
          num_heads: 8
    ```

    The fields and what they mean are in `hsr_plugin.settings.HSRSettings`; this class is the
    lifecycle: validate and score on the dense model (`on_initialize`), restore after pruning
    (`on_calibration_end`), report.
    """

    _run: RunState = PrivateAttr(default_factory=lambda: RunState())
    _restored: bool = PrivateAttr(default=False)
    _report: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def report(self) -> dict[str, Any] | None:
        """The HSR report (schema version 1), once weights have been restored."""
        return self._report

    # ------------------------------------------------------------------ lifecycle
    def on_initialize(self, state: State, **kwargs) -> bool:
        model, run = state.model, self._run
        run.earlier_pruning = earlier_pruning(self)
        blocks = target_blocks(model, self.targets, self.ignore)
        scorer = self.head_scorer()
        units = sum(scorer.units(b) for b in blocks)
        if self.num_heads > units:
            raise InvalidInputError(f"num_heads={self.num_heads} exceeds the {units} heads scored")
        if "mlp" in self.units:  # refused before any scoring if the layers have no such MLP
            find_mlp_blocks(model, layers=[b.layer for b in blocks])
        for block in blocks:
            for _, name, module in block.projections():
                with align_module_device(module):
                    require_finite(module.weight, f"weight of {name}")
        if self.dense_model is not None:
            run.dense = SafetensorsDenseSource(self.dense_model)
            run.dense.check({name: mod for b in blocks for _, name, mod in b.projections()})

        start = time.perf_counter()
        processor = load_processor(model_name_or_path(model), self.processor)
        safety = self._render(self.safety_data, processor, "safety_data")
        utility = self._render(self.utility_data, processor, "utility_data")
        benign = (
            None
            if self.benign_data is None
            else self._render(self.benign_data, processor, "benign_data")
        )
        run.timing["data"] = time.perf_counter() - start
        run.model_info = model_info(model, blocks)
        run.collective = current_collective(self.distributed_timeout_s)
        if run.collective is not None and self.head_prompts == "adaptive":
            raise InvalidInputError(
                "head_prompts: adaptive stops on the top set of all heads, which no rank sees "
                "under torchrun; use head_prompts: all"
            )
        if run.collective is not None and self.benign_stop_margin is not None:
            raise InvalidInputError(
                "benign_stop_margin measures the model between restoration steps in one "
                "process; it is not supported under torchrun: leave it out there"
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
            run.scoring = {"device": str(placed.device), "placement": placed.reason}
            if run.collective is not None:
                run.scoring["world_size"] = run.collective.world_size
            memory = (
                None
                if self.attribution_memory_gb is None
                else int(self.attribution_memory_gb * (1 << 30))
            )
            ctx = ScoringContext(
                model, blocks, placed.device, self, self.batch_size, pad_id, memory,
                "cpu" if self.offload_statistics else placed.device, run.collective,
            )  # fmt: skip
            self._score_and_plan(ctx, scorer, safety, utility, benign)
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
        self._run = RunState()
        return True

    # ------------------------------------------------------------------ steps
    def _render(self, spec: str, processor, field: str) -> list[CalibrationSample]:
        conversations = load_conversations(spec, self.num_samples, self.seed)
        samples = render_samples(conversations, processor, self.max_seq_length)
        if not any(bool(s.response_mask.any()) for s in samples):
            raise InvalidInputError(f"{field}={spec!r}: no response tokens to score")
        logger.info(f"HSR {field}: {len(samples)} samples from {spec}")
        return samples

    def _score_and_plan(
        self, ctx: ScoringContext, scorer: HeadScorer, safety, utility, benign=None
    ) -> None:
        run = self._run
        start = time.perf_counter()
        cost = AttributionCost()
        if self.reuse_head_scores is not None:
            logger.info("HSR reuses the head scores of an earlier run with the same settings")
            run.head_scores = list(self.reuse_head_scores)
        else:
            run.head_scores = scorer.score(ctx, safety, cost)
        run.scoring["head_scoring_forward_equivalents"] = round(cost.forward_equivalents, 4)
        if cost.prompts:
            run.scoring["head_scoring_prompts"] = cost.prompts
        if cost.rounds:  # head_prompts: adaptive: how the top set settled
            run.scoring["head_scoring_rounds"] = [
                {"prompts": n, "top": [list(key) for key in top]} for n, top in cost.rounds
            ]
        if cost.ranks:  # under torchrun: each rank's layers, work and seconds
            run.scoring["head_scoring_ranks"] = [
                {**share, "seconds": round(share["seconds"], 4)} for share in cost.ranks
            ]
        ranked = rank_heads({(s.layer, s.head): s.score for s in run.head_scores})
        run.selected = select_top_heads(ranked, self.num_heads)
        run.timing["head_scoring"] = time.perf_counter() - start

        plans = plan_heads(ctx.blocks, run.head_scores, run.selected, self.head_slicing)
        if "mlp" in self.units:
            start = time.perf_counter()
            mlp_plans, choices = plan_mlp_channels(ctx, safety, self.num_mlp_channels, run.dense)
            plans.update(mlp_plans)
            run.mlp_selected = [(c.layer, c.channel, c.score) for c in choices]
            run.timing["mlp_scoring"] = time.perf_counter() - start

        start = time.perf_counter()
        run.policy = self.restoration_policy()
        run.policy.prepare(ctx, plans, safety, utility, benign)
        run.plans = plans
        run.timing["neuron_scoring"] = time.perf_counter() - start
        if run.dense is None:
            start = time.perf_counter()
            run.dense = DenseSnapshot({name: plan.module for name, plan in plans.items()})
            run.timing["dense_snapshot"] = time.perf_counter() - start

    def _restore(self, model) -> None:
        run = self._run
        require_pruning_ended(run.earlier_pruning)
        start = time.perf_counter()
        if run.collective is not None:
            modules = {name: plan.module for name, plan in run.plans.items()}
            aligned = run.collective.align_pruned_positions(modules)
            run.scoring["pruned_positions_aligned_to_rank_0"] = aligned
        pruned_params, language_params = language_counts(model)
        dense = {name: run.dense.get(name) for name in run.plans}
        for name, weight in dense.items():
            require_finite(weight, f"dense weight of {name}")
        pruned_in_targets = sum(
            count_pruned(plan.module, dense[name]) for name, plan in run.plans.items()
        )
        if pruned_in_targets == 0:
            earlier = ", ".join(type(m).__name__ for m in run.earlier_pruning)
            raise StageOrderError(
                f"HSRModifier found no pruned weights in the attention of the selected heads' "
                f"layers: {earlier} pruned nothing there. Check its targets and sparsity, and "
                "give it calibration data (the 'datafree' pipeline runs none)."
            )
        cap = None
        if self.max_restored_per_10k is not None:
            cap = math.floor(self.max_restored_per_10k * language_params / 1e4 + 1e-9)
            run.scoring["budget"] = cap
        stats = run.policy.restore(model, run.plans, dense, cap, self)
        run.scoring.update(run.policy.scoring_notes())
        rows = [{**stats[name].as_report(), "unit": plan.unit} for name, plan in run.plans.items()]
        if not any(row["restored"] for row in rows):
            logger.warning(f"HSR restored no weights: {run.policy.nothing_restored_advice()}")
        run.timing["restore"] = time.perf_counter() - start
        self._restored = True
        self._report = build_report(
            config=self.model_dump(mode="json"),
            model=run.model_info,
            pruned_by=[type(m).__name__ for m in run.earlier_pruning],
            head_scores=run.head_scores,
            selected=run.selected,
            rows=rows,
            language_params=language_params,
            pruned_params=pruned_params,
            timing=run.timing,
            scoring=run.scoring,
            mlp_selected=run.mlp_selected,
        )
        saves = run.collective is None or run.collective.rank == 0
        run.plans, run.dense, run.policy, run.collective = {}, None, None, None  # freed
        if self.report_path and saves:  # under torchrun rank 0 writes it, as it saves the model
            write_json_atomic(self.report_path, self._report)
            logger.info(f"HSR report written to {self.report_path}")
        log_summary(self._report)


register_modifier(HSRModifier)
