"""hsr_plugin.settings: HSRModifier's fields, validated together: bad values and fields the chosen
mode ignores are refused by name, and the fields reach the chosen stages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import hsr_plugin  # noqa: F401
from hsr_plugin import HSRModifier

_VALUE = "HSRModifier: {}: Value error, {}"
_INPUT = "HSRModifier: {}: Input should be {}"
_ROUNDS = (
    "HSRModifier: value_error: Value error, rounds=2 re-scores between chunks of the budget: "
    "it needs neuron_score: restore_gain and max_restored_per_10k"
)


class _Block:
    num_heads, num_kv_heads = 4, 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"utility_top": 0.8, "utility_max": 0.7},
            _VALUE.format(
                "value_error",
                "utility_top (p=0.8) must not exceed utility_max (p_max=0.7): candidates are "
                "(top_q safety ∩ top_pmax utility) minus top_p utility",
            ),
        ),
        ({"num_heads": 0}, _INPUT.format("num_heads", "greater than or equal to 1")),
        (
            {"head_score": "ships_magic"},
            _INPUT.format(
                "head_score", "'ships_subspace', 'ships_kl', 'reference' or 'attribution'"
            ),
        ),
        (
            {"neuron_score": "gradient"},
            _INPUT.format("neuron_score", "'wanda', 'sparsegpt', 'snip' or 'restore_gain'"),
        ),
        ({"safety_top": 0.0}, _INPUT.format("safety_top", "greater than 0")),
        ({"head_slicing": "rows"}, _INPUT.format("head_slicing", "'exact' or 'reference'")),
        (
            {"preserve_nm": "2-4"},
            _VALUE.format("preserve_nm", "preserve_nm must look like '2:4', got '2-4'"),
        ),
        (
            {"preserve_nm": "5:4"},
            _VALUE.format("preserve_nm", "preserve_nm '5:4': need 0 < N <= M"),
        ),
        ({"ablation_eps": 2.0}, _INPUT.format("ablation_eps", "less than 1")),
        (
            {"safety_data": "  "},
            _VALUE.format(
                "safety_data", "calibration data must name a bundled set, a path or a dataset id"
            ),
        ),
        (
            {"utility_data": ""},
            _VALUE.format(
                "utility_data", "calibration data must name a bundled set, a path or a dataset id"
            ),
        ),
        (
            {"benign_data": " ", "neuron_score": "restore_gain"},
            _VALUE.format(
                "benign_data", "calibration data must name a bundled set, a path or a dataset id"
            ),
        ),
        ({"unknown_field": 1}, "HSRModifier: unknown_field: Extra inputs are not permitted"),
    ],
)
def test_bad_hyperparameters_are_rejected_by_the_config(kwargs, message):
    from hsr_plugin.cli.errors import one_line

    with pytest.raises(ValidationError) as err:
        HSRModifier(**kwargs)
    assert one_line(err.value) == message


@pytest.mark.parametrize(
    ("field", "value", "settings", "mode"),
    [
        ("subspace_rank", 2, {"head_score": "ships_kl"}, "head_score: ships_subspace"),
        (
            "ablation_eps",
            1e-3,
            {"head_score": "attribution"},
            "an ablating head score (ships_subspace, ships_kl, reference)",
        ),
        ("safety_top", 0.4, {"neuron_score": "restore_gain"}, "the paper's neuron level"),
        ("utility_top", 0.4, {"neuron_score": "restore_gain"}, "the paper's neuron level"),
        ("utility_max", 0.8, {"neuron_score": "restore_gain"}, "the paper's neuron level"),
        ("utility_tolerance", 0.1, {}, "neuron_score: restore_gain"),
        ("num_mlp_channels", 8, {}, "units: [heads, mlp]"),
        ("benign_data", "hsr-benign-mini", {}, "neuron_score: restore_gain"),
        ("benign_weight", 0.5, {"neuron_score": "restore_gain"}, "benign_data"),
        ("benign_stop_margin", 0.1, {"neuron_score": "restore_gain"}, "benign_data"),
    ],
)
def test_a_field_the_chosen_mode_ignores_is_refused_naming_the_mode(field, value, settings, mode):
    with pytest.raises(ValidationError) as err:
        HSRModifier(**settings, **{field: value})
    assert f"{field}={value!r} has no effect here: only {mode} uses it" in str(err.value)
    HSRModifier(**settings)  # the mode alone is fine, and so is the field in its own mode


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"units": ["mlp"]},
            "HSRModifier: units: Value error, units must include 'heads': ['heads'] or "
            "['heads', 'mlp']",
        ),
        ({"units": ["heads", "ffn"]}, "HSRModifier: units.1: Input should be 'heads' or 'mlp'"),
        ({"rounds": 2}, _ROUNDS),
        ({"rounds": 2, "neuron_score": "restore_gain"}, _ROUNDS),
        ({"rounds": 2, "max_restored_per_10k": 1.0}, _ROUNDS),
        (
            {"max_restored_per_10k": -1},
            "HSRModifier: max_restored_per_10k: Input should be greater than or equal to 0",
        ),
        (
            {"utility_tolerance": -0.1},
            "HSRModifier: utility_tolerance: Input should be greater than or equal to 0",
        ),
        (
            {"num_mlp_channels": 0},
            "HSRModifier: num_mlp_channels: Input should be greater than or equal to 1",
        ),
    ],
)
def test_invalid_new_fields_are_named(fields, message):
    from hsr_plugin import HSRModifier
    from hsr_plugin.cli.errors import one_line

    with pytest.raises(ValidationError) as err:
        HSRModifier(**fields)
    assert one_line(err.value) == message


def test_valid_units_and_rounds_are_kept():
    from hsr_plugin import HSRModifier

    assert HSRModifier(units=["heads", "mlp", "heads"]).units == ["heads", "mlp"]
    fields = {"rounds": 3, "neuron_score": "restore_gain", "max_restored_per_10k": 1.0}
    assert HSRModifier(**fields).rounds == 3


def test_the_modifier_hands_its_fields_to_the_head_scorer(monkeypatch):
    import hsr_plugin.head_score_stages as scorers
    from hsr_plugin import HSRModifier
    from hsr_plugin.scoring_context import ScoringContext

    calls = []
    monkeypatch.setattr(scorers, "score_heads", lambda *a, **k: calls.append((a, k)))
    hsr = HSRModifier(
        head_score="ships_subspace", ablation_eps=0.25, subspace_rank=3, batch_size=5,
        attribution_memory_gb=0.5,
    )  # fmt: skip
    ctx = ScoringContext("model", "blocks", "device", hsr, 5, 7, 1 << 29)
    hsr.head_scorer().score(ctx, "safety", "cost")
    ((args, kwargs),) = calls
    assert args == ("model", "blocks", "safety", "ships_subspace", 0.25, 3, 5, 7)
    assert kwargs == {
        "hooks": hsr, "device": "device", "memory_budget": 1 << 29, "cost": "cost",
        "collective": None, "rerun": "all_positions", "stop": None, "screen": None,
    }  # fmt: skip
    first_order = HSRModifier(head_score="attribution").head_scorer()
    assert first_order.method == "attribution" and first_order.units(_Block()) == 4
    assert HSRModifier(head_score="reference").head_scorer().units(_Block()) == 2
