"""`head_rerun: screened`: the last-position score screens every head, then exact Ships re-scores
the top candidates, and the top-h is chosen among them by their exact scores.

- How the two score lists merge, as a pure function (hypothesis): verified heads keep their exact
  scores and rank first; every other head ranks below them, in its screening order.
- On a model: the verified heads' scores equal exact Ships' bit for bit; verifying every head
  gives exact Ships; the cost lies between the screen's and exact's; with the adaptive stop the
  verification reads the prompts the screen read.
- Where the cache cannot be frozen for the screen (Mllama with a picture), every head is scored
  exactly, with a warning, instead of refusing a recommended recipe.
- The fields: refused where they mean nothing; the scorer verifies factor x h heads.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsr_plugin.exact_head_scores import score_heads, verified_first
from hsr_plugin.head_score_math import rank_heads, select_top_heads
from hsr_plugin.score_records import AttributionCost, HeadScore
from tests.helpers import (
    log_messages,
    mllama_with_pictures,
    scoring_setup,
    scoring_with_a_stop_after_two_rounds,
)


# ---------------------------------------------------------------- the merge
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 90, allow_nan=False), min_size=2, max_size=12),
    st.data(),
)
def test_verified_heads_rank_first_by_their_exact_scores(screen_values, data):
    screened = [HeadScore(0, h, h, v) for h, v in enumerate(screen_values)]
    chosen = data.draw(
        st.lists(st.sampled_from(range(len(screened))), min_size=1, unique=True), "verified"
    )
    exact_values = data.draw(
        st.lists(st.floats(0, 90, allow_nan=False), min_size=len(chosen), max_size=len(chosen))
    )
    verified = [HeadScore(0, h, h, v) for h, v in zip(chosen, exact_values, strict=True)]
    merged = verified_first(screened, verified)
    assert [(s.layer, s.head) for s in merged] == [(s.layer, s.head) for s in screened]
    by_head = {s.head: s.score for s in merged}
    for v in verified:
        assert by_head[v.head] == v.score
    ranked = rank_heads({(s.layer, s.head): s.score for s in merged})
    top = [key for key, _ in ranked[: len(chosen)]]
    assert set(top) == {(0, h) for h in chosen}
    floor = min(exact_values)
    for s in merged:
        if s.head not in chosen:
            assert s.score < floor and s.score <= screen_values[s.head]


# ---------------------------------------------------------------- on a model
def _scores(model, blocks, samples, pad, cost=None, **kwargs):
    return score_heads(
        model, blocks, samples, batch_size=3, pad_id=pad, progress=False, cost=cost, **kwargs
    )


def test_the_verified_heads_carry_exact_ships_scores(model_dirs, calib_files):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    costs = {name: AttributionCost() for name in ("exact", "screen", "screened")}
    exact = _scores(model, blocks, samples, pad, costs["exact"])
    screen = _scores(model, blocks, samples, pad, costs["screen"], rerun="last_position")
    screened = _scores(model, blocks, samples, pad, costs["screened"], rerun="screened", screen=3)
    candidates = select_top_heads(rank_heads({(s.layer, s.head): s.score for s in screen}), 3)
    exact_of = {(s.layer, s.head): s.score for s in exact}
    ranked = rank_heads({(s.layer, s.head): s.score for s in screened})
    assert {key for key, _ in ranked[:3]} == set(candidates)
    for key, score in ranked[:3]:
        assert score == exact_of[key]
    assert costs["screen"].work < costs["screened"].work < costs["exact"].work
    assert costs["screened"].unit == costs["exact"].unit
    assert costs["screened"].prompts == len(samples)


def test_verifying_every_head_is_exact_ships(model_dirs, calib_files):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "qwen2", "safety")
    heads = sum(b.num_heads for b in blocks)
    exact = _scores(model, blocks, samples, pad)
    every = _scores(model, blocks, samples, pad, rerun="screened", screen=heads)
    assert every == exact


def test_with_the_adaptive_stop_the_verification_reads_what_the_screen_read(
    model_dirs, calib_files
):
    setup, stop, cost, got = scoring_with_a_stop_after_two_rounds(
        model_dirs, calib_files, rerun="screened", screen=8
    )
    model, blocks, samples, pad = setup
    assert sum(b.num_heads for b in blocks) == 8  # every head verified
    read = [samples[i] for i in stop.reading_order(len(samples))[:4]]
    assert cost.prompts == 4
    assert got == score_heads(model, blocks, read, batch_size=2, pad_id=pad, progress=False)


def test_a_screen_without_a_count_is_refused(model_dirs, calib_files):
    from hsr_plugin.errors import InvalidInputError

    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    with pytest.raises(InvalidInputError, match="screened needs the number of heads"):
        _scores(model, blocks, samples, pad, rerun="screened")


def test_where_the_screen_cannot_run_every_head_is_scored_exactly(tmp_path):
    model, blocks, samples = mllama_with_pictures(tmp_path)
    cost, exact_cost = AttributionCost(), AttributionCost()
    with log_messages("WARNING") as warnings:
        got = score_heads(
            model, blocks, samples, progress=False, cost=cost, rerun="screened", screen=2
        )
    exact = score_heads(model, blocks, samples, progress=False, cost=exact_cost)
    assert got == exact
    assert (cost.work, cost.unit, cost.prompts) == (exact_cost.work, exact_cost.unit, 2)
    (warning,) = [m for m in warnings if "head_rerun: screened" in m]
    assert "cross-attention states" in warning and "Scoring every head exactly instead" in warning


# ---------------------------------------------------------------- the fields
def test_the_fields_choose_the_screen_and_refuse_what_means_nothing():
    from hsr_plugin import HSRModifier

    assert "head_screen_factor" in HSRModifier.SCORING_FIELDS
    scorer = HSRModifier(num_heads=4, head_rerun="screened", head_screen_factor=5).head_scorer()
    assert (scorer.rerun, scorer.screen) == ("screened", 20)
    assert HSRModifier(head_rerun="last_position").head_scorer().screen is None
    with pytest.raises(ValueError, match="head_screen_factor=2 has no effect here"):
        HSRModifier(head_screen_factor=2)
    with pytest.raises(ValueError, match="head_rerun='screened' has no effect here"):
        HSRModifier(head_score="attribution", head_rerun="screened")
