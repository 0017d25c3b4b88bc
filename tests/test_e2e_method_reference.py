"""HSR's choices against an independent reference written here, on the tiny GQA Llama.

Nothing in this file calls hsr_plugin to compute an expected value. From the method's definition
alone (heads ranked by the sum of principal angles between the final-layer last-prompt-token
states, intact and ablated; Wanda importance |W| * ||X_c|| over response tokens only;
S = (top_q(I_s) ∩ top_pmax(I_u)) minus top_p(I_u); exact head slices; pruned = (w == 0) and
(dense != 0)) the test computes which heads HSR must select, in which order, and exactly which
weights it must restore, then compares with a real `oneshot` run. A swapped argument, a reversed
ranking, a shifted response mask, squared norms, all-token statistics, a wrong KV group or an
ignored seed each change the expected set."""

from __future__ import annotations

import math
import random

import pytest
import torch

from integration.bench.tiny_models import SAFETY_ROWS, UTILITY_ROWS
from tests.helpers import HSR, WANDA, load_model, run_oneshot

EPS = 1e-5


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _encode(tok, prompt: str, answer: str | None):
    """(ids, first response position): the chat template applied to one exchange."""
    user = [{"role": "user", "content": prompt}]
    prompt_ids = tok(
        tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )["input_ids"]
    if answer is None:
        return torch.tensor([prompt_ids]), len(prompt_ids)
    full = user + [{"role": "assistant", "content": answer}]
    full_ids = tok(tok.apply_chat_template(full, tokenize=False), add_special_tokens=False)[
        "input_ids"
    ]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    return torch.tensor([full_ids]), len(prompt_ids)


def _sample(rows, num_samples: int, seed: int):
    """The documented sampling: `num_samples` distinct rows drawn with `seed`, in file order."""
    if num_samples >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), num_samples))]


def _attention(model, layer):
    return model.model.layers[layer].self_attn


@torch.no_grad()
def _final_states(model, tok, prompts, ablate=None):
    """Final-layer state of the last prompt token, one prompt at a time (no padding)."""
    handles = []
    if ablate is not None:
        layer, head = ablate
        attn, d = _attention(model, layer), model.config.head_dim
        lo, hi = head * d, (head + 1) * d

        def scale_q(_m, _a, out):
            out = out.clone()
            out[..., lo:hi] *= EPS
            return out

        def scale_o_input(_m, args):
            x = args[0].clone()
            x[..., lo:hi] *= EPS
            return (x,)

        handles = [
            attn.q_proj.register_forward_hook(scale_q),
            attn.o_proj.register_forward_pre_hook(scale_o_input),
        ]
    try:
        rows = []
        for prompt in prompts:
            ids, _ = _encode(tok, prompt, None)
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
            rows.append(out.hidden_states[-1][0, -1].double())
        return torch.stack(rows)
    finally:
        for handle in handles:
            handle.remove()


def _leading_subspace(states, rank):
    # eigenvectors of the Gram matrix (the package takes an SVD of the states)
    values, vectors = torch.linalg.eigh(states.T @ states)
    return vectors[:, torch.argsort(values, descending=True)[:rank]]


def _sum_of_principal_angles(a, b, rank=1):
    u, v = _leading_subspace(a, rank), _leading_subspace(b, rank)
    # sines of the principal angles: singular values of the part of v outside span(u)
    sines = torch.linalg.svdvals(v - u @ (u.T @ v)).clamp(0, 1)
    return float(torch.arcsin(sines).sum())


def _reference_head_scores(model, tok, prompts):
    intact = _final_states(model, tok, prompts)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    return {
        (layer, head): _sum_of_principal_angles(
            intact, _final_states(model, tok, prompts, (layer, head))
        )
        for layer in range(layers)
        for head in range(heads)
    }


@torch.no_grad()
def _input_sum_of_squares(model, tok, rows, names):
    """Per-input-feature sum of squares of each named Linear's input, response tokens only."""
    modules = dict(model.named_modules())
    sums = {name: torch.zeros(modules[name].in_features, dtype=torch.float64) for name in names}
    current = {}
    handles = [
        modules[name].register_forward_pre_hook(
            lambda _m, args, name=name: current.__setitem__(name, args[0][0].double())
        )
        for name in names
    ]
    try:
        for prompt, answer in rows:
            ids, start = _encode(tok, prompt, answer)
            model(input_ids=ids, use_cache=False)
            for name in names:
                sums[name] += current[name][start:].pow(2).sum(0)
    finally:
        for handle in handles:
            handle.remove()
    return sums


def _top_fraction(scores, fraction):
    flat = scores.reshape(-1)
    k = math.floor(fraction * flat.numel() + 1e-9)
    # descending score, ties broken by the lower flat index
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


def _head_rows_or_columns(shape, projection, head, heads_per_group, head_dim):
    mask = torch.zeros(shape, dtype=torch.bool)
    group = head // heads_per_group
    if projection == "q":
        mask[head * head_dim : (head + 1) * head_dim, :] = True
    elif projection in ("k", "v"):
        mask[group * head_dim : (group + 1) * head_dim, :] = True
    else:
        mask[:, head * head_dim : (head + 1) * head_dim] = True
    return mask


def _expected(tiny, selected, q=0.5, p=0.5, p_max=0.7, safety_rows=None, utility_rows=None):
    """Per module: (restore mask, candidates in the slices, pruned in the slices, I_s)."""
    dense, pruned_weights, tok = tiny["dense"], tiny["pruned"], tiny["tok"]
    safety_rows = SAFETY_ROWS if safety_rows is None else safety_rows
    utility_rows = UTILITY_ROWS if utility_rows is None else utility_rows
    config = dense.config
    d, group = config.head_dim, config.num_attention_heads // config.num_key_value_heads
    layers = sorted({layer for layer, _ in selected})
    names = [f"model.layers.{layer}.self_attn.{s}_proj" for layer in layers for s in "qkvo"]
    s_sq = _input_sum_of_squares(dense, tok, safety_rows, names)
    u_sq = _input_sum_of_squares(dense, tok, utility_rows, names)
    modules = dict(dense.named_modules())
    out = {}
    for name in names:
        weight = modules[name].weight.detach().double()
        i_s = weight.abs() * s_sq[name].sqrt()
        i_u = weight.abs() * u_sq[name].sqrt()
        candidates = _top_fraction(i_s, q) & _top_fraction(i_u, p_max) & ~_top_fraction(i_u, p)
        layer, projection = int(name.split(".")[2]), name[-6]
        slices = torch.zeros(weight.shape, dtype=torch.bool)
        for sel_layer, head in selected:
            if sel_layer == layer:
                slices |= _head_rows_or_columns(weight.shape, projection, head, group, d)
        pruned_now = pruned_weights[f"{name}.weight"]
        pruned = (pruned_now == 0) & (modules[name].weight != 0)
        out[name] = (candidates & slices & pruned, candidates & slices, pruned & slices, i_s)
    return out


@pytest.fixture(scope="module")
def tiny(model_dirs, calib_files):
    model_dir = model_dirs["llama"]
    dense = load_model(model_dir).eval()
    prune = WANDA.format(structure="0:0")
    pruned = {
        k: v.clone()
        for k, v in run_oneshot(model_dir, prune, calib_files["utility"]).state_dict().items()
    }
    tok = _tokenizer(model_dir)
    scores = _reference_head_scores(dense, tok, [p for p, _ in SAFETY_ROWS])
    return {
        "dir": model_dir,
        "dense": dense,
        "pruned": pruned,
        "tok": tok,
        "scores": scores,
        "prune": prune,
    }


def _run_hsr(tiny, calib_files, num_heads, extra=""):
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    recipe = tiny["prune"] + HSR.format(
        num_heads=num_heads,
        safety=calib_files["safety"],
        utility=calib_files["utility"],
        extra=extra,
    )
    model = run_oneshot(tiny["dir"], recipe, calib_files["utility"])
    mods = [m for m in active_session().lifecycle.recipe.modifiers if isinstance(m, HSRModifier)]
    return model, mods[0].report


def _keep_n_of_m(restore, pruned_weight, i_s, n=2, m=4):
    """Per group of m consecutive inputs, keep the restorations with the highest safety
    importance (ties: lower index) while the group holds at most n nonzeros."""
    keep = torch.zeros_like(restore)
    rows, cols = restore.shape
    for r in range(rows):
        for start in range(0, cols, m):
            room = n - int((pruned_weight[r, start : start + m] != 0).sum())
            wanted = [c for c in range(start, start + m) if restore[r, c]]
            wanted.sort(key=lambda c: (-float(i_s[r, c]), c))
            for c in wanted[: max(room, 0)]:
                keep[r, c] = True
    return keep


def test_heads_are_the_top_of_an_independent_ablation_loop_in_rank_order(tiny, calib_files):
    ranked = sorted(tiny["scores"], key=lambda key: (-tiny["scores"][key], key))
    _, report = _run_hsr(tiny, calib_files, num_heads=3)
    assert [tuple(h) for h in report["selected_heads"]] == ranked[:3], (
        "HSR must select the heads with the largest Ships scores, best first; "
        f"reference ranking {ranked}"
    )
    for row in report["heads"]:
        want = tiny["scores"][(row["layer"], row["head"])]
        assert row["score"] == pytest.approx(want, rel=1e-3, abs=1e-6), (
            f"head L{row['layer']}H{row['head']}: score {row['score']} != reference {want}"
        )
        assert row["kv_group"] == row["head"] // 2, "kv_group is head // (heads per KV group)"


@pytest.mark.parametrize(
    ("q", "p", "p_max"),
    [(0.5, 0.5, 0.7), (0.3, 0.0, 1.0), (0.8, 0.2, 0.6)],
    ids=["paper-defaults", "no-utility-exclusion", "wide-safety"],
)
def test_restored_weights_are_exactly_the_reference_set(tiny, calib_files, q, p, p_max):
    extra = f"      safety_top: {q}\n      utility_top: {p}\n      utility_max: {p_max}\n"
    model, report = _run_hsr(tiny, calib_files, num_heads=3, extra=extra)
    selected = [tuple(h) for h in report["selected_heads"]]
    expected = _expected(tiny, selected, q, p, p_max)
    final = model.state_dict()
    rows = {row["module"]: row for row in report["restored"]}
    total = 0
    for name, (restore, candidates, pruned_in_slice, _) in expected.items():
        key = f"{name}.weight"
        changed = final[key] != tiny["pruned"][key]
        missing, extra_pos = int((restore & ~changed).sum()), int((changed & ~restore).sum())
        assert missing == 0 and extra_pos == 0, (
            f"{name}: {missing} expected restorations missing, {extra_pos} unexpected "
            f"(q={q}, p={p}, p_max={p_max})"
        )
        dense_w = dict(tiny["dense"].named_parameters())[key]
        assert torch.equal(final[key][restore], dense_w[restore].detach()), f"{name}: not dense"
        assert rows[name]["restored"] == int(restore.sum()), f"{name}: report count"
        assert rows[name]["candidates"] == int(candidates.sum()), (
            f"{name}: the report's candidates count only those inside the selected heads"
        )
        assert rows[name]["pruned_in_slice"] == int(pruned_in_slice.sum()), name
        total += int(restore.sum())
    assert total > 0 and report["totals"]["restored"] == total
    linear = sum(
        m.weight.numel()
        for n, m in tiny["dense"].named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n
    )
    assert report["totals"]["language_params"] == linear, "lm_head is not a language param"


def test_the_restored_set_follows_q_p_and_p_max(tiny, calib_files):
    """More safety weights (q up) or no utility exclusion (p = 0, p_max = 1) restore more."""
    counts = {}
    for label, extra in [
        ("base", "      safety_top: 0.3\n"),
        ("q-up", "      safety_top: 0.6\n"),
        ("no-exclusion", "      safety_top: 0.3\n      utility_top: 0.0\n      utility_max: 1.0\n"),
    ]:
        _, report = _run_hsr(tiny, calib_files, num_heads=3, extra=extra)
        counts[label] = report["totals"]["restored"]
    assert counts["q-up"] > counts["base"], counts
    assert counts["no-exclusion"] > counts["base"], counts


def test_the_seed_picks_the_calibration_rows(tiny, calib_files):
    """num_samples below the rows: each seed draws its own rows, and HSR scores with them."""
    assert _sample(SAFETY_ROWS, 4, 0) != _sample(SAFETY_ROWS, 4, 1), "the seeds must differ here"
    for seed in (0, 1):
        safety, utility = _sample(SAFETY_ROWS, 4, seed), _sample(UTILITY_ROWS, 4, seed)
        scores = _reference_head_scores(tiny["dense"], tiny["tok"], [p for p, _ in safety])
        ranked = sorted(scores, key=lambda key: (-scores[key], key))
        extra = f"      seed: {seed}\n      num_samples: 4\n"
        model, report = _run_hsr(tiny, calib_files, num_heads=2, extra=extra)
        selected = [tuple(h) for h in report["selected_heads"]]
        assert selected == ranked[:2], f"seed {seed}: heads {selected}, reference {ranked[:2]}"
        expected = _expected(tiny, selected, safety_rows=safety, utility_rows=utility)
        final = model.state_dict()
        for name, (restore, _, _, _) in expected.items():
            changed = final[f"{name}.weight"] != tiny["pruned"][f"{name}.weight"]
            assert torch.equal(changed, restore), f"seed {seed}, {name}: not the seed's rows"


def test_preserve_nm_keeps_the_restorations_with_the_most_safety_importance(
    tiny, calib_files, monkeypatch
):
    import hsr_plugin.restoration_policies as modifier

    priorities = {}
    restore = modifier.module_restore_mask

    def spy(name, module, dense, candidates, slices, nm=None, priority=None):
        priorities[name] = priority
        return restore(name, module, dense, candidates, slices, nm, priority)

    monkeypatch.setattr(modifier, "module_restore_mask", spy)
    model, report = _run_hsr(tiny, calib_files, num_heads=3, extra="      preserve_nm: '2:4'\n")
    selected = [tuple(h) for h in report["selected_heads"]]
    expected = _expected(tiny, selected)
    final = model.state_dict()
    kept_total = 0
    for name, (restore, _, _, i_s) in expected.items():
        key = f"{name}.weight"
        assert torch.allclose(priorities[name].double(), i_s, rtol=1e-5), (
            f"{name}: N:M keeps restorations by SAFETY importance"
        )
        keep = _keep_n_of_m(restore, tiny["pruned"][key], i_s)
        changed = final[key] != tiny["pruned"][key]
        assert torch.equal(changed, keep), f"{name}: N:M kept the wrong restorations"
        groups = (final[key] != 0).reshape(final[key].shape[0], -1, 4).sum(-1)
        assert int((groups > 2).sum()) == int(
            (tiny["pruned"][key] != 0).reshape(groups.shape[0], -1, 4).sum(-1).gt(2).sum()
        ), f"{name}: a restoration broke a 2:4 group"
        kept_total += int(keep.sum())
    assert 0 < kept_total < sum(int(e[0].sum()) for e in expected.values())
