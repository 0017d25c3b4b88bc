"""restore_gain's measured stop (`benign_stop_margin`): the search along the ranking, the
measurement, and the modifier end to end on the tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hsr_plugin.benign_stop import (
    STOP_REFINEMENTS,
    STOP_STEPS,
    longest_holding_prefix,
    mean_response_nll,
)
from hsr_plugin.calibration import load_processor, render_samples
from hsr_plugin.conversations import load_conversations
from hsr_plugin.errors import InvalidInputError
from tests.helpers import HSR, WANDA, load_model, run_oneshot


# ---------------------------------------------------------------- the search, pure
@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 5000),
    crossing=st.integers(0, 6000),
)
def test_a_falling_measure_keeps_the_prefix_before_its_crossing_within_the_resolution(
    total, crossing
):
    """With a measure that holds up to `crossing` positions and falls after, the kept count
    never passes the crossing, and misses it by at most one refined step."""
    calls = []

    def measure(k: int) -> float:
        calls.append(k)
        return 1.0 if k <= crossing else 0.0

    kept, probes = longest_holding_prefix(total, measure, floor=0.5)
    assert [p.restored for p in probes] == calls
    assert calls[0] == 0
    assert 0 <= kept <= min(total, crossing)
    assert len(calls) <= 1 + STOP_STEPS + STOP_REFINEMENTS
    if crossing >= total:
        assert kept == total
    else:
        step = math.ceil(total / STOP_STEPS)
        assert min(total, crossing) - kept <= math.ceil(step / 2**STOP_REFINEMENTS)
        assert any(p.restored > kept and p.value < 0.5 for p in probes)


def test_the_starting_point_is_measured_but_never_stops_the_restoration():
    """The pruned model may already sit below the floor: k = 0 is recorded, and the first step
    decides."""
    kept, probes = longest_holding_prefix(100, lambda k: -1.0 if k == 0 else 1.0, floor=0.0)
    assert kept == 100
    assert [p.restored for p in probes] == [0, 12, 25, 38, 50, 62, 75, 88, 100]


def test_a_crossing_at_the_first_step_is_refined_down_towards_zero():
    kept, probes = longest_holding_prefix(800, lambda k: 1.0 if k <= 30 else 0.0, floor=0.5)
    assert [p.restored for p in probes] == [0, 100, 50, 25, 37]
    assert kept == 25
    assert longest_holding_prefix(0, lambda k: 1.0, 0.5) == (0, probes[:1])


def test_the_search_refuses_nonsense_arguments():
    with pytest.raises(ValueError, match="steps=0"):
        longest_holding_prefix(10, lambda k: 1.0, 0.0, steps=0)


# ---------------------------------------------------------------- the measurement
def test_the_measured_nll_is_the_mean_of_each_samples_response_nll(model_dirs, calib_files):
    """Batched and left-padded, it equals transformers' own loss run one sample at a time."""
    model = load_model(model_dirs["llama"]).eval()
    processor = load_processor(str(model_dirs["llama"]))
    samples = render_samples(load_conversations(str(calib_files["safety"]), 6, 0), processor, 128)
    reference = []
    with torch.no_grad():
        for s in samples:
            labels = torch.where(s.response_mask, s.input_ids, -100)
            reference.append(float(model(**s.model_inputs(), labels=labels).loss))
    measured = mean_response_nll(
        model, samples, 4, processor.pad_token_id or 0, torch.device("cpu")
    )
    assert measured == pytest.approx(sum(reference) / len(reference), rel=1e-5)


# ---------------------------------------------------------------- end to end
def _stop_run(model_dirs, calib_files, margin: float | None):
    """Wanda 50%, then restore_gain on the tiny Llama with the harmful requests themselves as
    the 'look-alikes' (benign_weight 0 keeps the ranking restore_gain's own): restoring them
    lowers their refusal NLL below the dense model's, so a margin decides where it stops."""
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    extra = (
        "      neuron_score: restore_gain\n"
        f"      benign_data: {calib_files['safety']}\n"
        "      benign_weight: 0.0\n"
    )
    if margin is not None:
        extra += f"      benign_stop_margin: {margin}\n"
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=extra
    )
    model = run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])
    mods = active_session().lifecycle.recipe.modifiers
    return model, next(m for m in mods if isinstance(m, HSRModifier)).report


def _changed(model, base) -> dict[str, torch.Tensor]:
    """Where `model`'s weights differ from `base`'s (the Wanda-only model: the restorations)."""
    other = base.state_dict()
    return {k: v != other[k] for k, v in model.state_dict().items() if k.endswith("proj.weight")}


def test_the_stop_keeps_a_prefix_of_the_ranking_that_holds_the_floor(model_dirs, calib_files):
    """A margin the full ranking crosses: the restoration keeps fewer weights, all of them among
    the unstopped run's, the kept count is the last measurement that held, a measurement past
    it fell below the floor, and measuring the saved model again gives the recorded value."""
    full, full_report = _stop_run(model_dirs, calib_files, None)
    stopped, report = _stop_run(model_dirs, calib_files, 0.025)
    stop = report["scoring"]["benign_stop"]
    (round_,) = stop["rounds"]
    assert round_["ranked"] == full_report["totals"]["restored"] > 0
    assert 0 < round_["kept"] == report["totals"]["restored"] < round_["ranked"]
    assert stop["floor"] == pytest.approx(stop["dense_benign_refusal_nll"] - 0.025, abs=1e-6)
    by_count = {p["restored"]: p["benign_refusal_nll"] for p in round_["probes"]}
    assert by_count[round_["kept"]] >= stop["floor"]
    assert any(k > round_["kept"] and v < stop["floor"] for k, v in by_count.items())

    pruned = run_oneshot(model_dirs["llama"], WANDA.format(structure="0:0"), calib_files["utility"])
    kept, everything = _changed(stopped, pruned), _changed(full, pruned)
    assert sum(int(m.sum()) for m in kept.values()) == round_["kept"]
    for name, mask in kept.items():
        assert not (mask & ~everything[name]).any(), name
    processor = load_processor(str(model_dirs["llama"]))
    samples = render_samples(load_conversations(str(calib_files["safety"]), 128, 0), processor, 512)
    again = mean_response_nll(stopped, samples, 8, processor.pad_token_id or 0, torch.device("cpu"))
    assert again == pytest.approx(by_count[round_["kept"]], abs=1e-5)


def test_a_margin_no_step_crosses_restores_exactly_what_no_stop_does(model_dirs, calib_files):
    """Stepping forwards and measuring leaves the weights bit-identical to one restoration."""
    plain, plain_report = _stop_run(model_dirs, calib_files, None)
    stepped, report = _stop_run(model_dirs, calib_files, 1e9)
    (round_,) = report["scoring"]["benign_stop"]["rounds"]
    assert round_["kept"] == round_["ranked"] == plain_report["totals"]["restored"]
    assert len(round_["probes"]) == 1 + STOP_STEPS
    state = stepped.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    assert "benign_stop" not in plain_report["scoring"]


def test_the_margin_needs_benign_data_and_a_single_process(model_dirs, calib_files, monkeypatch):
    from pydantic import ValidationError

    from hsr_plugin import HSRModifier
    from hsr_plugin.distributed import Collective

    with pytest.raises(ValidationError, match="benign_stop_margin=0.0 has no effect here"):
        HSRModifier(neuron_score="restore_gain", benign_stop_margin=0.0)
    monkeypatch.setattr(
        "hsr_plugin.modifier.current_collective", lambda timeout: Collective(0, 1, None)
    )
    with pytest.raises(InvalidInputError, match="not supported under torchrun"):
        _stop_run(model_dirs, calib_files, 0.0)
