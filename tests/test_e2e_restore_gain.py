"""Beyond the paper: `restore_gain` (restorations scored on the pruned model) and MLP channel
realignment (`units: [heads, mlp]`)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hsr_plugin.calibration import load_processor, render_samples
from hsr_plugin.conversations import load_conversations
from tests.helpers import HSR, WANDA, load_model, log_messages, run_oneshot


def _run(model_dir, calib_files, extra, num_heads=2):
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=num_heads,
        safety=calib_files["safety"],
        utility=calib_files["utility"],
        extra=extra,
    )
    model = run_oneshot(model_dir, recipe, calib_files["utility"])
    mods = active_session().lifecycle.recipe.modifiers
    return model, next(m for m in mods if isinstance(m, HSRModifier)).report


@pytest.fixture(scope="module")
def pruned(model_dirs, calib_files):
    return run_oneshot(model_dirs["llama"], WANDA.format(structure="0:0"), calib_files["utility"])


def _mean_safety_gradient(model, samples, names):
    """Reference: d(mean over samples of each sample's mean response NLL)/dW by backward."""
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    for p in twin.parameters():
        p.requires_grad_(False)
    for name in names:
        modules[name].weight.requires_grad_(True)
    for sample in samples:
        labels = torch.where(sample.response_mask, sample.input_ids, -100)
        loss = twin(**sample.model_inputs(), labels=labels, use_cache=False).loss
        (loss / len(samples)).backward()
    return {name: modules[name].weight.grad for name in names}


def test_restore_gain_restores_the_weight_with_the_largest_first_order_gain(
    model_dirs, calib_files, pruned
):
    """Budget of one weight: it must be the pruned weight, inside the selected heads' slices,
    whose restoration lowers the refusal NLL most to first order, computed here by backward
    on the pruned model; restoring it must lower the measured refusal NLL."""
    dense = load_model(model_dirs["llama"]).eval()
    _, free = _run(model_dirs["llama"], calib_files, "      neuron_score: restore_gain\n")
    params = free["totals"]["language_params"]
    model, report = _run(
        model_dirs["llama"],
        calib_files,
        "      neuron_score: restore_gain\n"
        f"      max_restored_per_10k: {1e4 / params!r}\n"
        "      utility_tolerance: 1000.0\n",
    )
    assert report["totals"]["restored"] == 1
    names = [row["module"] for row in report["restored"]]
    processor = load_processor(str(model_dirs["llama"]))
    samples = render_samples(load_conversations(str(calib_files["safety"]), 128, 0), processor, 512)
    grads = _mean_safety_gradient(pruned.eval(), samples, names)
    dense_w = {n: m.weight.detach() for n, m in dense.named_modules() if n in names}
    pruned_w = {n: m.weight.detach() for n, m in pruned.named_modules() if n in names}
    from hsr_plugin.slicing import union_head_slices

    best, best_gain = None, -math.inf
    selected = {tuple(h) for h in report["selected_heads"]}
    for name in names:
        layer = int(name.split(".layers.")[1].split(".")[0])
        short = name.rsplit(".", 1)[-1][0]
        heads = [(h, h // 2) for (lay, h) in selected if lay == layer]
        inside = union_head_slices(tuple(dense_w[name].shape), short, heads, 16, 4)
        gain = -(grads[name] * dense_w[name]).double()
        gain[~(inside & (pruned_w[name] == 0) & (dense_w[name] != 0))] = -math.inf
        flat = int(gain.flatten().argmax())
        if float(gain.flatten()[flat]) > best_gain:
            best, best_gain = (name, flat), float(gain.flatten()[flat])
    state = model.state_dict()
    changed = [
        (name, int(i))
        for name in names
        for i in (state[f"{name}.weight"] != pruned_w[name]).flatten().nonzero().flatten()
    ]
    assert changed == [best], f"restored {changed}, the largest first-order gain is at {best}"
    assert best_gain > 0

    def safety_loss(m):
        total = 0.0
        for sample in samples:
            labels = torch.where(sample.response_mask, sample.input_ids, -100)
            total += float(m(**sample.model_inputs(), labels=labels, use_cache=False).loss)
        return total / len(samples)

    with torch.no_grad():
        assert safety_loss(model) < safety_loss(pruned)


def test_mlp_realignment_touches_only_the_selected_channels(model_dirs, calib_files, pruned):
    model, report = _run(
        model_dirs["llama"],
        calib_files,
        "      units: [heads, mlp]\n      num_mlp_channels: 5\n      safety_top: 0.9\n"
        "      utility_top: 0.0\n      utility_max: 1.0\n",
    )
    channels = [(c["layer"], c["channel"]) for c in report["selected_mlp_channels"]]
    assert len(channels) == 5
    scores = [c["score"] for c in report["selected_mlp_channels"]]
    assert scores == sorted(scores, reverse=True)
    assert report["totals"]["restored_in_mlp"] > 0
    assert (
        report["totals"]["restored_in_heads"] + report["totals"]["restored_in_mlp"]
        == (report["totals"]["restored"])
    )
    before, after = pruned.state_dict(), model.state_dict()
    for key, value in after.items():
        changed = value != before[key]
        if ".mlp." not in key:
            if "self_attn" not in key:
                assert not bool(changed.any()), f"{key} changed"
            continue
        layer = int(key.split(".layers.")[1].split(".")[0])
        mine = [c for lay, c in channels if lay == layer]
        allowed = torch.zeros_like(changed)
        if "down_proj" in key:
            allowed[:, mine] = True
        else:
            allowed[mine, :] = True
        assert not bool((changed & ~allowed).any()), f"{key}: a change outside the channels"
    rows = {row["module"]: row for row in report["restored"]}
    assert {row["unit"] for row in rows.values()} == {"heads", "mlp"}
    assert all(row["unit"] == "mlp" for name, row in rows.items() if ".mlp." in name)


def test_too_many_mlp_channels_fail_before_pruning(model_dirs, calib_files):
    message = "num_mlp_channels=100000 exceeds the 256 MLP channels of the targeted layers"
    with pytest.raises(ValueError, match=f"^{message}$"):
        _run(
            model_dirs["llama"],
            calib_files,
            "      units: [heads, mlp]\n      num_mlp_channels: 100000\n",
        )


def test_rounds_spend_the_whole_budget_in_shares(model_dirs, calib_files, capsys):
    """rounds=2: half the budget, re-scoring, then the rest; the report names the model."""
    _, free = _run(model_dirs["llama"], calib_files, "      neuron_score: restore_gain\n")
    params = free["totals"]["language_params"]
    extra = (
        "      neuron_score: restore_gain\n"
        f"      max_restored_per_10k: {21 * 1e4 / params!r}\n"
        "      utility_tolerance: 1000.0\n"
    )

    with log_messages() as lines:
        _, one = _run(model_dirs["llama"], calib_files, extra)
    for field in ("safety", "utility"):
        rows = len(calib_files[field].read_text().splitlines())
        assert f"HSR {field}_data: {rows} samples from {calib_files[field]}" in lines, lines
    _, two = _run(model_dirs["llama"], calib_files, extra + "      rounds: 2\n")
    assert one["totals"]["restored"] == two["totals"]["restored"] == 21
    # shares of 4 over 3 rounds: 2, 1, 1 (the last round runs though only one weight is left)
    small = extra.replace(repr(21 * 1e4 / params), repr(4 * 1e4 / params))
    _, three = _run(model_dirs["llama"], calib_files, small + "      rounds: 3\n")
    assert three["totals"]["restored"] == 4
    bars = capsys.readouterr().err
    for which in ("safety", "utility"):
        assert f"HSR restore_gain {which} gradients (round 2)" in bars
    # MLP channels planned for restore_gain are reported as MLP rows
    _, mlp = _run(
        model_dirs["llama"],
        calib_files,
        extra + "      units: [heads, mlp]\n      num_mlp_channels: 4\n",
    )
    units = {row["module"].split(".")[3]: row["unit"] for row in mlp["restored"]}
    assert units == {"self_attn": "heads", "mlp": "mlp"}
    assert two["model"] == {
        "class": "LlamaForCausalLM",
        "name_or_path": str(model_dirs["llama"]),
        "attention_blocks": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "attention_layout": "separate",
    }


def test_mlp_realignment_reads_a_separate_dense_checkpoint(model_dirs, calib_files):
    """dense_model given: the MLP matrices' dense weights come from it, checked up front."""
    _, report = _run(
        model_dirs["llama"],
        calib_files,
        f"      dense_model: {model_dirs['llama']}\n      units: [heads, mlp]\n"
        "      num_mlp_channels: 4\n",
    )
    assert report["totals"]["restored_in_mlp"] > 0 and report["totals"]["restored_in_heads"] > 0


def test_restore_gain_restoring_nothing_says_what_to_change(model_dirs, calib_files, monkeypatch):

    import hsr_plugin.restoration_policies as modifier_module

    real = modifier_module.restore_gain_mask

    def nothing(*args, **kwargs):
        mask, gains, stats = real(*args, **kwargs)
        return torch.zeros_like(mask), gains, stats

    monkeypatch.setattr(modifier_module, "restore_gain_mask", nothing)
    with log_messages("WARNING") as lines:
        _, report = _run(model_dirs["llama"], calib_files, "      neuron_score: restore_gain\n")
    assert report["totals"]["restored"] == 0
    assert (
        "HSR restored no weights: no pruned weight of the selected units would lower the refusal "
        "NLL without raising the utility NLL by more than utility_tolerance (0.0). Raise "
        "utility_tolerance or select more heads."
    ) in lines, lines


def test_benign_lookalikes_that_are_the_harmful_requests_cancel_every_gain(model_dirs, calib_files):
    """`benign_data` nets out what restoring brings to refusing benign look-alikes: with the
    harmful requests themselves as the look-alikes and weight 1, every gain nets to exactly zero,
    nothing is restored, and the warning says which knob to turn."""
    import llmcompressor  # noqa: F401  (its first import resets loguru's sinks)

    extra = (
        "      neuron_score: restore_gain\n"
        f"      benign_data: {calib_files['safety']}\n"
        "      benign_weight: 1.0\n"
    )
    with log_messages("WARNING") as lines:
        _, report = _run(model_dirs["llama"], calib_files, extra)
    assert report["totals"]["restored"] == 0
    assert (
        "HSR restored no weights: no pruned weight of the selected units would lower the refusal "
        "NLL without raising the utility NLL by more than utility_tolerance (0.0), net of benign "
        "look-alike refusals (benign_weight 1.0). Raise utility_tolerance, lower benign_weight "
        "or select more heads."
    ) in lines, lines


def test_benign_weight_zero_restores_exactly_what_restore_gain_alone_does(model_dirs, calib_files):
    plain, plain_report = _run(
        model_dirs["llama"], calib_files, "      neuron_score: restore_gain\n"
    )
    weighted, report = _run(
        model_dirs["llama"],
        calib_files,
        "      neuron_score: restore_gain\n"
        "      benign_data: hsr-benign-mini\n"
        "      benign_weight: 0.0\n",
    )
    assert report["totals"]["restored"] == plain_report["totals"]["restored"] > 0
    state = weighted.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
