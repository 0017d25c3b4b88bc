"""`head_prompts: adaptive`: exact head scoring that stops once its top-h set stops moving.

- The stopping rule, as a pure function of the rounds' top sets (hypothesis): it stops at the
  first round whose top set equals the previous `stable_rounds` rounds' top sets, never earlier.
- An early stop changes nothing but the prompts read: its scores equal exact scores on the
  prompts it read, bit for bit, with and without the last-position re-run; a stop that never
  comes gives the scores of every prompt.
- The cost: fewer forward-pass equivalents over the same unit (an intact pass over every prompt
  offered), and the prompts read are counted.
- Under llm-compressor's oneshot, the report records the prompts read and the restoration stays
  exact; bad settings are refused with one line.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hsr_plugin.distributed import Collective
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.exact_head_scores import AdaptiveStop, _StabilityWatch, score_heads
from hsr_plugin.head_score_math import rank_heads, select_top_heads
from hsr_plugin.score_records import AttributionCost
from tests.helpers import (
    HSR,
    WANDA,
    run_oneshot,
    scoring_setup,
    scoring_with_a_stop_after_two_rounds,
)


# ---------------------------------------------------------------- the rule
def _rounds_until_stop(tops: list[int], stable_rounds: int) -> int | None:
    """Feed one round per entry (the entry is the only head with a positive score) and return
    the 1-based round at which the watch stops, or None."""
    watch = _StabilityWatch(AdaptiveStop(top=1, stable_rounds=stable_rounds, round_prompts=4))
    for index, top in enumerate(tops):
        scores = {(0, h): (1.0 if h == top else 0.0) for h in range(4)}
        if watch.settled(4 * (index + 1), lambda scores=scores: scores):
            return index + 1
    return None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12), st.integers(1, 4))
def test_the_watch_stops_at_the_first_run_of_k_repeats(tops, stable_rounds):
    want = next(
        (
            i + 1
            for i in range(stable_rounds, len(tops))
            if len(set(tops[i - stable_rounds : i + 1])) == 1
        ),
        None,
    )
    assert _rounds_until_stop(tops, stable_rounds) == want


def test_a_round_is_at_least_round_prompts_more_prompts():
    watch = _StabilityWatch(AdaptiveStop(top=1, stable_rounds=1, round_prompts=8))
    calls = []

    def scores():
        calls.append(1)
        return {(0, 0): 1.0, (0, 1): 0.0}

    # batches of 3 prompts: rounds end at 9 and 18 prompts, and only then are scores read
    stops = [watch.settled(seen, scores) for seen in (3, 6, 9, 12, 15, 18)]
    assert stops == [False, False, False, False, False, True]
    assert len(calls) == 2


@pytest.mark.parametrize("field", ["top", "stable_rounds", "round_prompts"])
def test_a_stop_with_a_zero_is_refused(field):
    values = {"top": 1, "stable_rounds": 1, "round_prompts": 1, field: 0}
    with pytest.raises(InvalidInputError, match="must be >= 1"):
        AdaptiveStop(**values)


# ---------------------------------------------------------------- on a model
@pytest.mark.parametrize("rerun", ["all_positions", "last_position"])
def test_an_early_stop_equals_exact_scores_on_the_prompts_it_read(model_dirs, calib_files, rerun):
    setup, stop, cost, early = scoring_with_a_stop_after_two_rounds(
        model_dirs, calib_files, rerun=rerun
    )
    model, blocks, samples, pad = setup
    heads = sum(b.num_heads for b in blocks)
    assert cost.prompts == 4 < len(samples)
    full_cost = AttributionCost()
    order = stop.reading_order(len(samples))
    assert sorted(order) == list(range(len(samples))) and order != sorted(order)
    read = score_heads(
        model, blocks, [samples[i] for i in order[:4]], batch_size=2, pad_id=pad,
        progress=False, cost=full_cost, rerun=rerun,
    )  # fmt: skip
    assert [s.score for s in early] == [s.score for s in read]
    # the record of rounds: prompts read and the top set, best first, which the scores returned
    # at the stop reproduce
    assert [n for n, _ in cost.rounds] == [2, 4]
    ranked = rank_heads({(s.layer, s.head): s.score for s in early})
    assert cost.rounds[-1][1] == select_top_heads(ranked, heads)
    every = AttributionCost()
    score_heads(
        model, blocks, samples, batch_size=2, pad_id=pad, progress=False, cost=every, rerun=rerun
    )
    # the same unit (an intact pass over every prompt), the work of 4 prompts of them
    assert cost.unit == every.unit and every.prompts == len(samples)
    assert cost.forward_equivalents < 0.8 * every.forward_equivalents


def test_a_stop_that_never_comes_reads_every_prompt(model_dirs, calib_files):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    cost = AttributionCost()
    never = score_heads(
        model, blocks, samples, batch_size=2, pad_id=pad, progress=False, cost=cost,
        stop=AdaptiveStop(top=1, stable_rounds=10, round_prompts=2),
    )  # fmt: skip
    exact = score_heads(model, blocks, samples, batch_size=2, pad_id=pad, progress=False)
    assert cost.prompts == len(samples)
    # the same prompts in another order: the same subspaces, up to rounding
    torch.testing.assert_close(
        torch.tensor([s.score for s in never]), torch.tensor([s.score for s in exact])
    )
    # a round ends every 2 prompts, the last one included
    assert [n for n, _ in cost.rounds] == list(range(2, len(samples) + 1, 2))


def test_first_order_and_torchrun_refuse_a_stop(model_dirs, calib_files):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    stop = AdaptiveStop(top=1, stable_rounds=1, round_prompts=2)
    with pytest.raises(InvalidInputError, match="use head_prompts: all"):
        score_heads(model, blocks, samples, "attribution", pad_id=pad, progress=False, stop=stop)
    with pytest.raises(InvalidInputError, match="use head_prompts: all"):
        score_heads(
            model, blocks, samples, pad_id=pad, progress=False, stop=stop,
            collective=Collective(0, 1, None),
        )  # fmt: skip


# ---------------------------------------------------------------- the fields
def test_the_fields_choose_the_stop_and_refuse_what_means_nothing():
    from hsr_plugin import HSRModifier

    assert {"head_prompts", "head_stable_rounds"} <= set(HSRModifier.SCORING_FIELDS)
    scorer = HSRModifier(num_heads=4, batch_size=6, head_prompts="adaptive").head_scorer()
    assert scorer.stop == AdaptiveStop(top=4, stable_rounds=3, round_prompts=6, seed=0)
    assert HSRModifier(head_prompts="adaptive", seed=5).head_scorer().stop.seed == 5
    assert HSRModifier().head_scorer().stop is None
    with pytest.raises(ValueError, match="head_stable_rounds=2 has no effect here"):
        HSRModifier(head_stable_rounds=2)
    with pytest.raises(ValueError, match="head_prompts='adaptive' has no effect here"):
        HSRModifier(head_score="attribution", head_prompts="adaptive")


def test_the_sweep_keys_adaptive_scores_by_the_top_set_they_watch():
    from hsr_plugin.sweep import head_scoring_key

    assert head_scoring_key({"num_heads": 2}) == head_scoring_key({"num_heads": 3})
    adaptive = {"head_prompts": "adaptive"}
    assert head_scoring_key({**adaptive, "num_heads": 2}) != head_scoring_key(
        {**adaptive, "num_heads": 3}
    )


def test_under_oneshot_the_report_counts_the_prompts_read(model_dirs, calib_files):
    extra = (
        "      head_prompts: adaptive\n      head_stable_rounds: 1\n      batch_size: 2\n"
        "      num_samples: 8\n      head_rerun: last_position\n"
    )
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=8, safety=calib_files["safety"], utility=calib_files["utility"], extra=extra
    )
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])
    (hsr,) = [m for m in active_session().lifecycle.recipe.modifiers if isinstance(m, HSRModifier)]
    scoring = hsr.report["scoring"]
    # 2 layers x 4 heads, all selected: the top set never moves, so two rounds of 2 prompts
    assert scoring["head_scoring_prompts"] == 4
    assert [r["prompts"] for r in scoring["head_scoring_rounds"]] == [2, 4]
    assert sorted(map(tuple, scoring["head_scoring_rounds"][-1]["top"])) == sorted(
        map(tuple, hsr.report["selected_heads"])
    )
    assert len(hsr.report["selected_heads"]) == 8
    assert torch.isfinite(torch.tensor([h["score"] for h in hsr.report["heads"]])).all()
