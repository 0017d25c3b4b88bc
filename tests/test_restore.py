"""hsr_plugin.restore: the restoration budget (exact, ranked by safety importance, deterministic on
ties, in every mode) and N:M patterns."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hsr_plugin.restore import budget_masks
from tests.helpers import HSR, WANDA, run_oneshot


def _reference_keep(masks, priorities, cap):
    """Independent: list every masked position, sort by (-priority, matrix order, flat index)."""
    entries = []
    for order, (name, mask) in enumerate(masks.items()):
        for flat in mask.flatten().nonzero().flatten().tolist():
            entries.append((-float(priorities[name].flatten()[flat]), order, flat, name))
    entries.sort()
    keep = {name: torch.zeros_like(mask) for name, mask in masks.items()}
    for _, _, flat, name in entries[:cap]:
        keep[name].view(-1)[flat] = True
    return keep


def _restored(model_dir, calib_files, extra):
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=extra
    )
    model = run_oneshot(model_dir, recipe, calib_files["utility"])
    mods = active_session().lifecycle.recipe.modifiers
    report = next(m for m in mods if isinstance(m, HSRModifier)).report
    return model.state_dict(), report


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=12, max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
    st.integers(0, 14),
)
def test_budget_keeps_the_highest_priorities_with_deterministic_ties(levels, flags, cap):
    # few distinct priority levels, so ties are common
    priority = torch.tensor(levels, dtype=torch.float32).reshape(2, 2, 3)
    mask = torch.tensor(flags).reshape(2, 2, 3)
    masks = {"a": mask[0], "b": mask[1]}
    priorities = {"a": priority[0], "b": priority[1]}
    kept = budget_masks(masks, priorities, cap)
    want = _reference_keep(masks, priorities, cap)
    for name in masks:
        assert torch.equal(kept[name], want[name]), name
    assert sum(int(k.sum()) for k in kept.values()) == min(cap, int(mask.sum()))


def test_a_negative_budget_is_an_error():
    with pytest.raises(ValueError, match="budget must be >= 0"):
        budget_masks({"a": torch.ones(2, dtype=torch.bool)}, {"a": torch.ones(2)}, -1)


@pytest.mark.parametrize(
    "mode",
    [
        "      neuron_score: wanda\n",
        "      neuron_score: sparsegpt\n",
        "      neuron_score: snip\n",
        "      head_score: attribution\n",
        "      neuron_score: wanda\n      preserve_nm: '2:4'\n",
    ],
    ids=["wanda", "sparsegpt", "snip", "attribution-heads", "wanda-nm"],
)
def test_the_budget_is_honoured_exactly(model_dirs, calib_files, mode):
    free_weights, free = _restored(model_dirs["llama"], calib_files, mode)
    unbudgeted = free["totals"]["restored"]
    assert unbudgeted > 10, "the tiny model must restore enough for a budget to bite"
    params = free["totals"]["language_params"]
    per_10k = (unbudgeted // 3) * 1e4 / params
    cap = math.floor(per_10k * params / 1e4 + 1e-9)
    weights, report = _restored(
        model_dirs["llama"], calib_files, mode + f"      max_restored_per_10k: {per_10k!r}\n"
    )
    assert report["totals"]["restored"] == cap == unbudgeted // 3
    assert report["scoring"]["budget"] == cap
    assert sum(row["restored"] for row in report["restored"]) == cap
    assert report["selected_heads"] == free["selected_heads"]
    pruned_ref = run_oneshot(
        model_dirs["llama"], WANDA.format(structure="0:0"), calib_files["utility"]
    ).state_dict()
    for key, value in weights.items():
        # budgeted restorations are a subset of the unbudgeted ones; nothing else moves
        changed = value != pruned_ref[key]
        assert not bool((changed & ~(free_weights[key] != pruned_ref[key])).any()), key
        assert torch.equal(value[changed], free_weights[key][changed]), key
    again, _ = _restored(
        model_dirs["llama"], calib_files, mode + f"      max_restored_per_10k: {per_10k!r}\n"
    )
    assert all(torch.equal(again[k], weights[k]) for k in weights), "same inputs, same weights"


@pytest.mark.parametrize("pattern", ["0:4", "-1:4", "5:4"])
def test_nm_patterns_need_at_least_one_kept_weight(pattern):
    from hsr_plugin.restore import parse_nm

    with pytest.raises(ValueError, match=f"preserve_nm '{pattern}': need 0 < N <= M"):
        parse_nm(pattern)
    assert parse_nm("1:4") == (1, 4) and parse_nm("4:4") == (4, 4) and parse_nm(None) is None


def test_budget_ties_go_to_the_earlier_matrix_then_the_lower_index():
    from hsr_plugin.restore import budget_masks

    masks = {"a": torch.ones(40, 125, dtype=torch.bool), "b": torch.ones(40, 125, dtype=torch.bool)}
    flat = torch.tensor([1.0, 0.0] * 2500).reshape(40, 125)
    kept = budget_masks(masks, {"a": flat, "b": flat.clone()}, cap=3000)
    ones = flat.flatten().nonzero().flatten()
    want_a = torch.zeros(5000, dtype=torch.bool)
    want_a[ones] = True  # every 1.0 of a (2500), then the first 500 ones of b
    want_b = torch.zeros(5000, dtype=torch.bool)
    want_b[ones[:500]] = True
    assert torch.equal(kept["a"].flatten(), want_a) and torch.equal(kept["b"].flatten(), want_b)


def test_benign_look_alikes_only_rerank_weights_that_help_safety():
    """restore_gain_mask with grad_benign: a weight whose restoration raises the refusal NLL is
    never a candidate, however much it lowers the benign look-alikes' refusal NLL; among the
    helpful ones, the net gain decides."""
    import torch
    from torch import nn

    from hsr_plugin.restore import restore_gain_mask

    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()  # every weight pruned
    dense = torch.ones(1, 4)
    inside = torch.ones(1, 4, dtype=torch.bool)
    # safety gain -g_s*w: [+2, +1, -1, +1]; benign refusal gain -g_b*w: [+3, 0, -5, +0.5]
    g_s = torch.tensor([[-2.0, -1.0, 1.0, -1.0]])
    g_b = torch.tensor([[-3.0, 0.0, 5.0, -0.5]])
    no_harm = torch.zeros(1, 4)
    mask, gain, stats = restore_gain_mask("m", layer, dense, inside, g_s, no_harm, 0.0, None, g_b)
    # net: [-1, +1, +4, +0.5]: the third nets most but hurts safety, the first helps safety but
    # buys it with benign refusals
    assert mask.tolist() == [[False, True, False, True]]
    assert gain.tolist() == [[-1.0, 1.0, 4.0, 0.5]] and stats.candidates == 2
    plain, _, _ = restore_gain_mask("m", layer, dense, inside, g_s, no_harm, 0.0)
    assert plain.tolist() == [[True, True, False, True]]
