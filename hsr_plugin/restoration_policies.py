"""Restoration policies, one per neuron level: which pruned weights of the planned units get
their dense values back.

- `ImportanceRestoration` (the paper's neuron level, `neuron_score: wanda | sparsegpt | snip`):
  candidates S = (top_q(I_s) ∩ top_pmax(I_u)) minus top_p(I_u) from importance on the DENSE
  model, restored where pruned, optionally under a budget and N:M preservation;
- `RestoreGainRestoration` (`neuron_score: restore_gain`): after pruning, the pruned weights of
  the planned units ranked by the first-order drop of the refusal NLL that restoring them
  brings on the PRUNED model, without raising the utility NLL by more than a tolerance; the
  budget may be spent in rounds that re-score in between. With benign look-alike requests, a
  candidate must also keep a positive gain net of what restoring brings to refusing them, and
  that net gain ranks it. With `benign_stop_margin` as well, the ranking is restored in steps
  and stops, measured, before those requests grow more refusable than on the dense model
  (`hsr_plugin.benign_stop`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import torch
from compressed_tensors.utils import align_module_device
from llmcompressor.utils.helpers import DisableQuantization, eval_context
from loguru import logger
from torch import nn

from hsr_plugin.benign_stop import StopProbe, longest_holding_prefix, mean_response_nll
from hsr_plugin.calibration import CalibrationSample
from hsr_plugin.distributed import Collective
from hsr_plugin.neuron_scoring import (
    collect_statistics,
    importance_scores,
    mean_weight_gradients,
)
from hsr_plugin.placement import execution_placement
from hsr_plugin.restore import (
    RestoreStats,
    budget_masks,
    module_restore_mask,
    parse_nm,
    restore_gain_mask,
    restore_module,
)
from hsr_plugin.scoring_context import ScoringContext
from hsr_plugin.selection import stacked_candidate_mask
from hsr_plugin.unit_plans import UnitPlan

__all__ = ["ImportanceRestoration", "RestorationPolicy", "RestoreGainRestoration"]


def in_step(collective: Collective | None, step: str, compute):
    """`compute()`; under torchrun, returned only once every rank has run it (a rank that
    raised makes every rank raise)."""
    if collective is None:
        return compute()
    return collective.settle(step, compute)


def apply_everywhere(collective: Collective | None, plans, dense, masks) -> None:
    """Copy the dense values back on `masks`. Under torchrun the ranks may share their CPU
    weights (compressed-tensors offloads to memory shared across ranks), so every rank must
    have read the pruned weights before any rank writes (the caller's `in_step`), and all must
    have written before any reads again: every rank writes the same values, so a rank that
    holds its own copy ends up with the same model."""

    def write() -> None:
        for name, plan in plans.items():
            restore_module(plan.module, dense[name], masks[name])

    in_step(collective, "restoration", write)


class RestorationPolicy(Protocol):
    def prepare(
        self,
        ctx: ScoringContext,
        plans: dict[str, UnitPlan],
        safety: list[CalibrationSample],
        utility: list[CalibrationSample],
        benign: list[CalibrationSample] | None = None,
    ) -> None:
        """On the dense model, in `on_initialize`: whatever the policy needs later. `benign`:
        benign requests worded like harmful ones, with the refusal they must not get."""

    def restore(
        self, model: nn.Module, plans: dict[str, UnitPlan], dense: dict, cap: int | None, hooks
    ) -> dict[str, RestoreStats]:
        """After pruning: copy dense values back; per-matrix statistics."""

    def nothing_restored_advice(self) -> str: ...

    def scoring_notes(self) -> dict:
        """What the restoration measured on its way, for the report's `scoring` (may be empty)."""


@dataclass
class ImportanceRestoration:
    neuron_score: str
    safety_top: float
    utility_top: float
    utility_max: float
    preserve_nm: str | None = None
    budgeted: bool = False  # a max_restored_per_10k is set
    _collective: Collective | None = None

    def prepare(self, ctx, plans, safety, utility, benign=None) -> None:
        if benign is not None:  # the settings refuse benign_data outside restore_gain
            raise ValueError("the paper's neuron level takes no benign look-alike requests")
        self._collective = ctx.collective
        modules = {name: plan.module for name, plan in plans.items()}
        stats_s, stats_u = (
            collect_statistics(
                ctx.model,
                modules,
                samples,
                self.neuron_score,
                f"HSR {which} importance",
                hooks=ctx.hooks,
                device=ctx.device,
                stats_device=ctx.stats_device,
                batch_size=ctx.batch_size,
                pad_id=ctx.pad_id,
                collective=ctx.collective,
            )
            for which, samples in (("safety", safety), ("utility", utility))
        )
        # the safety importance ranks restorations only for N:M and for the budget
        ranked = self.preserve_nm is not None or self.budgeted
        for name, plan in plans.items():
            with align_module_device(plan.module):
                weight = plan.module.weight.detach()
                # each matrix's statistics are freed as soon as its mask is built
                i_s = importance_scores(self.neuron_score, stats_s.pop(name), weight)
                i_u = importance_scores(self.neuron_score, stats_u.pop(name), weight)
            candidates = stacked_candidate_mask(
                i_s, i_u, self.safety_top, self.utility_top, self.utility_max, plan.row_blocks
            )
            plan.candidates = candidates.cpu()
            plan.priority = i_s.float().cpu() if ranked else None

    def restore(self, model, plans, dense, cap, hooks) -> dict[str, RestoreStats]:
        nm = parse_nm(self.preserve_nm)
        masks, stats = {}, {}

        def choose() -> None:
            for name, plan in plans.items():
                masks[name], stats[name] = module_restore_mask(
                    name, plan.module, dense[name], plan.candidates, plan.slices, nm, plan.priority
                )

        in_step(self._collective, "restoration masks", choose)
        if cap is not None:
            masks = budget_masks(masks, {n: p.priority for n, p in plans.items()}, cap)
            stats = {n: replace(s, restored=int(masks[n].sum())) for n, s in stats.items()}
        apply_everywhere(self._collective, plans, dense, masks)
        return stats

    def nothing_restored_advice(self) -> str:
        return (
            "no pruned weight of the selected heads is a candidate. Raise safety_top "
            f"(q={self.safety_top}), lower utility_top (p={self.utility_top}) or raise "
            f"utility_max (p_max={self.utility_max}), or select more heads (num_heads)."
        )

    def scoring_notes(self) -> dict:
        return {}


@dataclass
class RestoreGainRestoration:
    utility_tolerance: float
    rounds: int = 1
    preserve_nm: str | None = None
    offload_statistics: bool = False
    benign_weight: float = 1.0
    benign_stop_margin: float | None = None
    _samples: tuple | None = None
    _benign_given: bool = False
    _collective: Collective | None = None
    _batching: tuple[int, int] = (1, 0)
    _dense_benign_nll: float | None = None
    _stop: dict | None = None

    def prepare(self, ctx, plans, safety, utility, benign=None) -> None:
        # candidates are chosen after pruning, on the pruned model
        self._samples = (safety, utility, benign)
        self._benign_given = benign is not None
        self._collective = ctx.collective
        self._batching = (ctx.batch_size, ctx.pad_id)
        if self.benign_stop_margin is not None:
            if benign is None:  # the settings refuse the margin without benign_data
                raise ValueError("benign_stop_margin measures on benign_data, which is missing")
            # the dense model's level, which the restored model's must not fall below
            self._dense_benign_nll = mean_response_nll(
                ctx.model, benign, *self._batching, ctx.device
            )
            logger.info(
                "HSR benign look-alike refusal NLL on the dense model: "
                f"{self._dense_benign_nll:.4f}"
            )

    def restore(self, model, plans, dense, cap, hooks) -> dict[str, RestoreStats]:
        """Candidates scored on the PRUNED model by first-order safety gain; `rounds` re-scores."""
        safety, utility, benign = self._samples
        sets = [("safety", safety), ("utility", utility)]
        if benign is not None:
            sets.append(("benign look-alike refusal", benign))
        modules = {name: plan.module for name, plan in plans.items()}
        nm = parse_nm(self.preserve_nm)
        restored = {name: 0 for name in plans}
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
                        hooks=hooks,
                        stats_device="cpu" if self.offload_statistics else placed.device,
                        collective=self._collective,
                    )
                    for which, samples in sets
                ]
                masks, gains = in_step(
                    self._collective,
                    "restore_gain masks",
                    partial(self._round_masks, plans, dense, grads, nm, benign is not None, first),
                )
                if remaining is not None:
                    share = math.ceil(remaining / (self.rounds - round_index))
                    masks = budget_masks(masks, gains, share)
                stopped = False
                if self.benign_stop_margin is None:
                    apply_everywhere(self._collective, plans, dense, masks)
                else:
                    masks, stopped = self._restore_until_benign_floor(
                        model, plans, dense, masks, gains, benign, placed.device, round_index
                    )
                for name in plans:
                    restored[name] += int(masks[name].sum())
                done = sum(int(m.sum()) for m in masks.values())
                if remaining is not None:
                    remaining -= done
                if done == 0 or remaining == 0 or stopped:
                    break
        self._samples = None
        return {name: replace(first[name], restored=restored[name]) for name in plans}

    def _restore_until_benign_floor(
        self, model, plans, dense, masks, gains, benign, device, round_index
    ) -> tuple[dict, bool]:
        """Restore `masks` along `gains` in steps, measuring the benign look-alike refusal NLL
        after each, and keep the longest prefix that stays at or above the dense model's less
        the margin. Returns the masks kept and whether the floor stopped the restoration."""
        floor = self._dense_benign_nll - self.benign_stop_margin
        pruned = {}
        for name, plan in plans.items():  # the pruned values, to take a step back exactly
            with align_module_device(plan.module):
                pruned[name] = plan.module.weight.detach().to("cpu", copy=True)
        applied = {name: torch.zeros_like(mask) for name, mask in masks.items()}

        def move_to(k: int) -> dict:
            target = budget_masks(masks, gains, k)
            for name, plan in plans.items():
                restore_module(plan.module, dense[name], target[name] & ~applied[name])
                restore_module(plan.module, pruned[name], applied[name] & ~target[name])
            applied.update(target)
            return target

        def measure(k: int) -> float:
            move_to(k)
            value = mean_response_nll(model, benign, *self._batching, device)
            logger.info(
                f"HSR benign stop, round {round_index + 1}: {k:,} restored, benign look-alike "
                f"refusal NLL {value:.4f} (floor {floor:.4f})"
            )
            return value

        total = sum(int(m.sum()) for m in masks.values())
        kept, probes = longest_holding_prefix(total, measure, floor)
        kept_masks = move_to(kept)
        stopped = kept < total
        self._record_stop(round_index, floor, total, kept, probes)
        return kept_masks, stopped

    def _record_stop(self, round_index, floor, total, kept, probes: list[StopProbe]) -> None:
        if self._stop is None:
            self._stop = {
                "dense_benign_refusal_nll": round(self._dense_benign_nll, 6),
                "margin": self.benign_stop_margin,
                "floor": round(floor, 6),
                "rounds": [],
            }
        self._stop["rounds"].append(
            {
                "round": round_index + 1,
                "ranked": total,
                "kept": kept,
                "probes": [p.as_report() for p in probes],
            }
        )

    def scoring_notes(self) -> dict:
        return {} if self._stop is None else {"benign_stop": self._stop}

    def _round_masks(self, plans, dense, grads, nm, with_benign, first) -> tuple[dict, dict]:
        """One round's restoration masks and gains, from its gradients (`first` keeps each
        matrix's counts of the first round)."""
        masks, gains = {}, {}
        for name, plan in plans.items():
            masks[name], gains[name], stats = restore_gain_mask(
                name,
                plan.module,
                dense[name],
                plan.slices,
                grads[0].pop(name),
                grads[1].pop(name),
                self.utility_tolerance,
                nm,
                grads[2].pop(name) if with_benign else None,
                self.benign_weight,
            )
            first.setdefault(name, stats)
        return masks, gains

    def nothing_restored_advice(self) -> str:
        return (
            "no pruned weight of the selected units would lower the refusal NLL without "
            f"raising the utility NLL by more than utility_tolerance "
            f"({self.utility_tolerance})"
            + (
                f", net of benign look-alike refusals (benign_weight {self.benign_weight}). "
                "Raise utility_tolerance, lower benign_weight"
                if self._benign_given
                else ". Raise utility_tolerance"
            )
            + " or select more heads."
        )
