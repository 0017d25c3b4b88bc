"""Head attribution on the dense model: one score per (layer, head), on the execution device.

Exact scores (Ships) compare the intact model with the model with one head ablated, at the last
prompt position of every safety prompt (user turn + generation prompt):
- `ships_kl`: mean KL(p_dense || p_ablated) of the next-token distribution;
- `ships_subspace`: principal angles between the leading singular subspaces of the final-layer
  states (N x d) of the last prompt token, intact vs ablated;
- `reference`: the authors' code: angle (degrees) on hidden feature 0, one score per KV group.

They are computed cheaply but exactly: one intact pass records what every decoder layer receives
(`hsr_plugin.decoder_stack`); each ablated head of layer l then runs only layers l..L-1, the
final norm and the output head, and several heads run in one pass on a replicated batch with a
different head ablated in each replica, as many as a memory budget allows.

`score_heads` is the entry point of every `head_score`: `attribution`, the first-order
alternative, is computed by `hsr_plugin.first_order_scores`.

Text-only prompts are batched with left padding; prompts with images run one at a time.

With an `AdaptiveStop` (`head_prompts: adaptive`), the exact scores stop early: after every round
of at least `round_prompts` prompts (whole batches), the scores so far give a top-h set; once that
set has not moved for `stable_rounds` rounds in a row, the remaining prompts are not scored.
With `rerun="screened"`, the last-position score screens every head and exact Ships re-scores the
top candidates on the same prompts (`verified_first`).

About 490 lines: the single-process, shared-out (torchrun), screened and adaptive runs are
variants of one loop over replicated ablation passes and share its checks; the first-order
scores are `first_order_scores.py`, the math `head_score_math.py`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Literal

import torch
from llmcompressor.modifiers.utils.hooks import HooksMixin
from loguru import logger
from tqdm import tqdm

from hsr_plugin.ablation import ablate_heads_per_position, ablate_heads_per_replica, ablation_units
from hsr_plugin.architecture import (
    AttentionBlock,
    UnsupportedArchitectureError,
    is_multimodal,
    text_config,
)
from hsr_plugin.calibration import CalibrationSample, batch_to_device, prompt_batches
from hsr_plugin.checks import all_finite
from hsr_plugin.decoder_stack import DecoderStack, find_decoder_stack, replicable, replicate
from hsr_plugin.distributed import Collective, balanced_shares
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.first_order_scores import first_order_head_scores
from hsr_plugin.frozen_context import FrozenContextError, LastPositionRerun
from hsr_plugin.head_score_math import (
    last_token_kl,
    principal_angle_score,
    rank_heads,
    reference_angle_score,
    select_top_heads,
)
from hsr_plugin.placement import execution_device
from hsr_plugin.score_records import AttributionCost, HeadScore

if TYPE_CHECKING:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

__all__ = [
    "AdaptiveStop",
    "HeadRerun",
    "HeadScoreMethod",
    "LastTokenOutputs",
    "heads_per_pass",
    "last_token_outputs",
    "score_heads",
    "verified_first",
]

HeadScoreMethod = Literal["ships_kl", "ships_subspace", "reference", "attribution"]
# what an exact score re-runs after the ablated layer: every prompt position, or the last one
# against the intact pass's frozen keys and values (hsr_plugin.frozen_context)
# (`screened`: the last position for every head, then every position for the top candidates)
HeadRerun = Literal["all_positions", "last_position", "screened"]
# bytes of activations one replicated pass may use on the CPU: batching more heads per pass does
# not cut the CPU's work, and host memory is what the pruning stage needs too
DEFAULT_CPU_BUDGET = 128 << 20


@dataclass
class LastTokenOutputs:
    logits: torch.Tensor  # (N, vocab)
    states: torch.Tensor  # (N, d): final-layer hidden state


@dataclass(frozen=True)
class AdaptiveStop:
    """When exact head scoring may stop before the last safety prompt: once the top `top` units
    (heads, or KV groups for `reference`) have not moved for `stable_rounds` rounds in a row
    (`stable_rounds` + 1 equal top sets), a round being at least `round_prompts` more prompts
    (whole batches). The prompts are read in a seeded random order, so that each round adds a
    random draw of the set even when the file is sorted (by category, say)."""

    top: int
    stable_rounds: int
    round_prompts: int
    seed: int = 0

    def __post_init__(self):
        if min(self.top, self.stable_rounds, self.round_prompts) < 1:
            raise InvalidInputError(f"{self}: top, stable_rounds and round_prompts must be >= 1")

    def reading_order(self, count: int) -> list[int]:
        """The order in which the `count` prompts are read."""
        order = list(range(count))
        random.Random(self.seed).shuffle(order)
        return order


class _StabilityWatch:
    """Applies an `AdaptiveStop` to the scores so far, round by round."""

    def __init__(self, stop: AdaptiveStop):
        self.stop = stop
        self.checked = 0  # prompts seen at the last check
        self.previous: set | None = None
        self.stable = 0
        self.history: list[tuple[int, list[tuple[int, int]]]] = []  # (prompts, top set)

    def settled(self, seen: int, scores) -> bool:
        """`scores()`: the current {(layer, unit): score}; read only at the end of a round."""
        if seen - self.checked < self.stop.round_prompts:
            return False
        self.checked = seen
        ranked = select_top_heads(rank_heads(scores()), self.stop.top)
        self.history.append((seen, list(ranked)))
        self.stable = self.stable + 1 if set(ranked) == self.previous else 0
        self.previous = set(ranked)
        return self.stable >= self.stop.stable_rounds


@torch.no_grad()
def last_token_outputs(
    model: torch.nn.Module,
    samples: list[CalibrationSample],
    batch_size: int = 8,
    pad_id: int = 0,
    device: torch.device | None = None,
) -> LastTokenOutputs:
    """Next-token logits and final hidden state at the last prompt position, for every sample."""
    device = device if device is not None else execution_device(model)
    logits, states = [], []
    for batch in prompt_batches(samples, batch_size, pad_id, positions=not is_multimodal(model)):
        out = model(**batch_to_device(batch, device), use_cache=False, output_hidden_states=True)
        logits.append(out.logits[:, -1].float().cpu())
        states.append(out.hidden_states[-1][:, -1].float().cpu())
    return LastTokenOutputs(torch.cat(logits), torch.cat(states))


def heads_per_pass(
    budget_bytes: int, rows: int, width: int, hidden: int, intermediate: int, heads: int
) -> int:
    """How many replicas of a (rows x width) batch one ablated pass may hold within the budget.

    Per replica: the residual stream and a layer's intermediate activations, plus the attention
    probabilities of eager attention, all in float32 (an upper bound for half precision).
    """
    per_replica = rows * width * (6 * hidden + 3 * intermediate + heads * width) * 4
    return max(1, budget_bytes // max(per_replica, 1))


def activation_memory_budget(device: torch.device, budget: int | None) -> int:
    """Bytes the cached layer inputs may take: `budget` if given, else a share of free memory."""
    if budget is not None:
        return budget
    if device.type != "cpu" and hasattr(torch.accelerator, "get_memory_info"):
        free, _total = torch.accelerator.get_memory_info(device.index or 0)
        return free // 4
    return DEFAULT_CPU_BUDGET


def _intermediate(model: torch.nn.Module, hidden: int) -> int:
    return int(getattr(text_config(model), "intermediate_size", None) or 4 * hidden)


class _UnitResults:
    """Per ablation unit: per-prompt KL values (ships_kl) or last-token states (angles)."""

    def __init__(self, method: HeadScoreMethod):
        self.method = method
        self.values: list[torch.Tensor] = []

    def add(self, dense_logits, logits, states, what: str) -> None:
        _check_finite(logits, states, what)
        if self.method == "ships_kl":
            self.values.append(last_token_kl(dense_logits, logits.cpu()))
        else:
            self.values.append(states.cpu())

    def score(self, dense_states: torch.Tensor, rank: int) -> float:
        if self.method == "ships_kl":
            return float(torch.cat(self.values).mean())
        states = torch.cat(self.values)
        if self.method == "ships_subspace":
            return principal_angle_score(dense_states, states, rank)
        return reference_angle_score(dense_states, states)


def score_heads(
    model: torch.nn.Module,
    blocks: list[AttentionBlock],
    samples: list[CalibrationSample],
    method: HeadScoreMethod = "ships_subspace",
    eps: float = 1e-5,
    subspace_rank: int = 1,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
    hooks: HooksMixin | None = None,
    device: torch.device | None = None,
    memory_budget: int | None = None,
    cost: AttributionCost | None = None,
    collective: Collective | None = None,
    rerun: HeadRerun = "all_positions",
    stop: AdaptiveStop | None = None,
    screen: int | None = None,
) -> list[HeadScore]:
    """Score every head (every KV group in reference mode) of `blocks` on the safety prompts.

    `device`: where inputs go (the model's execution device by default). `memory_budget`: bytes
    of activations one replicated pass may use (a quarter of the accelerator's free memory, or
    128 MiB on the CPU, by default). `cost`, if given, receives the work done.
    Every pass runs inside `HooksMixin.disable_hooks`, keeping only HSR's own hooks (owned by
    `hooks`, the HSRModifier; a bare `HooksMixin` when called on its own).
    With `collective` (torchrun), the exact scores are shared out by layer and the first-order
    passes by batch; either way every rank gets the scores a single process computes.
    `rerun="last_position"`: the exact scores re-run only the last prompt position after the
    ablated layer, against the intact keys and values of the others (`frozen_context`).
    `stop`: exact scores only, single process: stop early once the top set is stable.
    `rerun="screened"`: the last-position score screens every head, then the top `screen` are
    re-scored exactly (every position re-run) on the same prompts (`verified_first`); where the
    family's cache cannot be frozen for the screen, every head is scored exactly, with a warning.
    """
    if not samples:
        raise InvalidInputError("head attribution needs at least one safety prompt")
    if stop is not None and (method == "attribution" or collective is not None):
        raise InvalidInputError(
            "head_prompts: adaptive applies to an ablating head score in a single process "
            "(not to head_score: attribution, nor under torchrun); use head_prompts: all"
        )
    device = device if device is not None else execution_device(model)
    owner = hooks if hooks is not None else HooksMixin()
    cost = cost if cost is not None else AttributionCost()
    if method == "attribution":
        cost.prompts += len(samples)
        return first_order_head_scores(
            model, blocks, samples, batch_size, pad_id, device, owner, progress, cost, collective
        )
    if stop is not None:
        samples = [samples[i] for i in stop.reading_order(len(samples))]
    if rerun == "screened" and not screen:
        raise InvalidInputError("head_rerun: screened needs the number of heads to verify")

    def scores(samples, rerun, stop=None, only=None):
        run = partial(
            _exact_scores, model, samples=samples, method=method, eps=eps,
            subspace_rank=subspace_rank, batch_size=batch_size, pad_id=pad_id, device=device,
            owner=owner, memory_budget=memory_budget, rerun=rerun, stop=stop, only=only,
        )  # fmt: skip
        if collective is None:
            return run(blocks=blocks, cost=cost, progress=progress)
        cost.prompts += len(samples)
        return _exact_scores_shared(run, blocks, method, cost, progress, collective)

    if rerun != "screened":
        return scores(samples, rerun, stop)
    saved = (cost.work, cost.unit, cost.prompts, list(cost.rounds))
    try:
        screened = scores(samples, "last_position", stop)
    except FrozenContextError as error:  # a family whose cache cannot be frozen: no screen
        logger.warning(f"HSR head_rerun: screened: {error}. Scoring every head exactly instead.")
        cost.work, cost.unit, cost.prompts, cost.rounds = saved
        return scores(samples, "all_positions", stop)
    before = saved[2]  # prompts counted before this call
    read = cost.prompts - before  # the verification reads the prompts the screen read, no more
    ranked = rank_heads({(s.layer, s.head): s.score for s in screened})
    keep = set(select_top_heads(ranked, min(screen, len(ranked))))
    unit = cost.unit  # the unit stays one intact pass; the second one is work
    verified = scores(samples[:read], "all_positions", only=keep)
    cost.unit, cost.prompts = unit, before + read
    return verified_first(screened, verified)


def verified_first(screened: list[HeadScore], verified: list[HeadScore]) -> list[HeadScore]:
    """`head_rerun: screened`'s scores: the exact score of each verified head; every other head
    keeps its screening score, capped just below the lowest verified score, so that the
    verified heads rank first and the top-h is chosen among them by their exact scores."""
    exact = {(v.layer, v.head): v for v in verified}
    cap = math.nextafter(min(v.score for v in verified), -math.inf)
    return [exact.get((s.layer, s.head)) or replace(s, score=min(s.score, cap)) for s in screened]


def _exact_scores_shared(run, blocks, method, cost, progress, collective) -> list[HeadScore]:
    """Each rank scores the heads of its share of the layers, balanced by cost (a head of layer
    l re-runs l..L-1), on the full safety set; every rank gets every score."""
    depth = max(b.layer for b in blocks) + 1
    mode = "reference" if method == "reference" else "exact"
    costs = [len(ablation_units(b, mode)) * (depth - b.layer) for b in blocks]
    share = balanced_shares(costs, collective.world_size)[collective.rank]
    mine = [blocks[i] for i in share]

    def score_mine():
        local = AttributionCost()
        start = time.perf_counter()
        scores = run(blocks=mine, cost=local, progress=progress and collective.rank == 0)
        seconds = time.perf_counter() - start
        return (
            scores,
            {"layers": [b.layer for b in mine], "work": local.work, "seconds": seconds},
            local.unit,
        )

    by_layer: dict[int, list[HeadScore]] = {}
    for rank, (scores, share_info, unit) in enumerate(
        collective.gather(f"head scoring ({method})", score_mine)
    ):
        for score in scores:
            by_layer.setdefault(score.layer, []).append(score)
        cost.work += share_info["work"]
        cost.unit = max(cost.unit, unit)  # one intact pass over the prompts, on any rank
        cost.ranks.append({"rank": rank, **share_info})
    return [score for b in blocks for score in by_layer.get(b.layer, [])]


def _exact_scores(
    model, *, blocks, samples, method, eps, subspace_rank, batch_size, pad_id, device, owner,
    memory_budget, cost, progress, rerun="all_positions", stop=None, only=None,
) -> list[HeadScore]:  # fmt: skip
    """`only`: score these (layer, unit) keys alone (all of `blocks`' units by default)."""
    mode = "reference" if method == "reference" else "exact"
    units = {
        b.layer: [
            (h, g) for h, g in ablation_units(b, mode) if only is None or (b.layer, h) in only
        ]
        for b in blocks
    }
    blocks = [b for b in blocks if units[b.layer]]
    if not blocks:  # a rank with no layer to score (more ranks than layers), or none verified
        return []
    stack = find_decoder_stack(model, blocks)
    units = {b.layer: units[b.layer] for b in blocks}
    last_only = rerun == "last_position"
    results = {(b.layer, h): _UnitResults(method) for b in blocks for h, _ in units[b.layer]}
    budget = activation_memory_budget(device, memory_budget)
    dense_states = []
    batches = list(prompt_batches(samples, batch_size, pad_id, positions=not is_multimodal(model)))
    total = len(batches) * sum(len(u) for u in units.values())
    bar = tqdm(total=total, desc=f"HSR head scores ({method})", disable=not progress)
    watch, seen = (_StabilityWatch(stop) if stop is not None else None), 0

    def scores_so_far():
        dense = torch.cat(dense_states)
        return {key: r.score(dense, subspace_rank) for key, r in results.items()}

    with torch.no_grad():
        for index, batch in enumerate(batches):
            batch = batch_to_device(batch, device)
            rows, width = batch["input_ids"].shape
            positions = 1 if last_only else width  # re-run after an ablated layer
            cost.unit += rows * width * len(stack)
            with stack.capture(owner, set(units)) as captured:
                out = model(**batch, use_cache=last_only, output_hidden_states=True)
            cost.work += rows * width * len(stack)
            logits, states = out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()
            _check_finite(logits, states, "the intact model")
            if index == 0:
                _check_tail(stack, captured.last[0], logits, states, type(model).__name__)
            frozen = None
            if last_only:
                frozen = LastPositionRerun(
                    stack, captured, out.past_key_values, width, type(model).__name__
                )
            if index == 0 or captured.between:  # and wherever the model added between layers
                _check_rerun(stack, captured, min(units), type(model).__name__)
            if frozen is not None and index == 0:
                frozen.check_reproduces(min(units), type(model).__name__)
            dense_cpu = logits.cpu()
            dense_states.append(states.cpu())
            hidden = captured.inputs[min(units)].hidden.shape[-1]
            per_pass = heads_per_pass(
                budget, rows, positions, hidden, _intermediate(model, hidden),
                blocks[0].num_heads,
            )  # fmt: skip
            if frozen is None and not replicable(captured, rows):
                per_pass = 1
            for block in blocks:
                layer_units = [h for h, _ in units[block.layer]]
                for start in range(0, len(layer_units), per_pass):
                    chunk = layer_units[start : start + per_pass]
                    if frozen is not None:
                        with ablate_heads_per_position(block, chunk, eps, mode, owner):
                            ablated = frozen.final_states(frozen.run_from(block.layer, len(chunk)))
                    else:
                        ablated = _ablated_tail(
                            stack, block, captured, chunk, rows, eps, mode, owner
                        )
                    cost.work += len(chunk) * rows * positions * (len(stack) - block.layer)
                    for r, head in enumerate(chunk):
                        results[(block.layer, head)].add(
                            dense_cpu,
                            ablated[0][r * rows : (r + 1) * rows],
                            ablated[1][r * rows : (r + 1) * rows],
                            f"{block.name} with head {head} ablated",
                        )
                    bar.update(len(chunk))
            del captured, out
            seen += rows
            # checked after the last batch too, for the record of rounds; nothing is left to skip
            settled = watch is not None and watch.settled(seen, scores_so_far)
            if settled and index + 1 < len(batches):
                for rest in batches[index + 1 :]:  # `unit` covers every prompt offered
                    cost.unit += rest["input_ids"].numel() * len(stack)
                bar.close()
                logger.info(
                    f"HSR head scores: the top {stop.top} came out the same in "
                    f"{stop.stable_rounds + 1} rounds in a row; stopped after {seen} of "
                    f"{len(samples)} prompts (head_prompts: adaptive)"
                )
                break
    bar.close()
    cost.prompts += seen
    if watch is not None:
        cost.rounds = watch.history
    dense = torch.cat(dense_states)
    return [
        HeadScore(b.layer, h, g, results[(b.layer, h)].score(dense, subspace_rank))
        for b in blocks
        for h, g in units[b.layer]
    ]


def _check_finite(logits: torch.Tensor, states: torch.Tensor, what: str) -> None:
    """NaN or inf would reach the SVD of the subspace score; say where they came from."""
    if not all_finite(logits, states):
        raise InvalidInputError(
            f"head attribution: the next-token logits or final states of {what} on the safety "
            "prompts are not finite (NaN or inf), so its head score would be too"
        )


def _ablated_tail(stack: DecoderStack, block, captured, heads, rows, eps, mode, owner):
    """(logits, states) at the last position, one replica of the batch per head in `heads`."""
    hidden = replicate(captured.inputs[block.layer].hidden, rows, len(heads))
    with ablate_heads_per_replica(block, heads, rows, eps, mode, owner):
        final = stack.run_from(block.layer, captured, hidden, len(heads))
    return stack.final_states(final)


def _check_tail(stack: DecoderStack, last_hidden, logits, states, model_name: str) -> None:
    """The re-run tail (final norm + output head + final factors) must reproduce the model's own
    outputs; where the config's factors have several readings, keep the one that does."""
    for factor, softcap in ((stack.logit_factor, stack.softcap), *stack.readings):
        stack.logit_factor, stack.softcap = factor, softcap
        tail_logits, tail_states = stack.final_states(last_hidden)
        if torch.allclose(tail_logits, logits, rtol=1e-3, atol=1e-4) and torch.allclose(
            tail_states, states, rtol=1e-3, atol=1e-4
        ):
            return
    raise UnsupportedArchitectureError(
        f"{model_name}: the final norm and output head applied to the last decoder layer's "
        "output do not reproduce the model's logits (a final factor HSR does not know?), so "
        "head attribution cannot re-run the decoder from a layer"
    )


def _check_rerun(stack: DecoderStack, captured, start: int, model_name: str) -> None:
    """Re-running the intact decoder from the first scored layer must give the intact pass's
    last hidden states: the guard for a family that changes the hidden states between layers
    in a way the re-run does not reproduce. (Not counted in the cost: a check, not scoring.)"""
    again = stack.run_from(start, captured, captured.inputs[start].hidden, 1)
    want = captured.last[0]
    if not torch.allclose(again.float(), want.float(), rtol=1e-3, atol=1e-4):
        gap = float((again.float() - want.float()).abs().max())
        raise UnsupportedArchitectureError(
            f"{model_name}: re-running the decoder from layer {start} does not reproduce the "
            f"intact pass (max difference {gap:.3g}): the model changes its hidden states "
            "between layers in a way HSR cannot replay, so exact head attribution would be "
            "wrong; head_score: attribution (first order) does not re-run layers"
        )
