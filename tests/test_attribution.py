"""hsr_plugin.attribution: head scores by the cached exact loop (equal to the naive one) and by
first-order attribution, their cost and their errors.

The naive loop (one full pass per head, `integration/bench/naive_attribution.py`) is the
reference the cached path must equal."""

from __future__ import annotations

import pytest
import torch
from llmcompressor.modifiers.utils.hooks import HooksMixin

from hsr_plugin.architecture import find_attention_blocks
from hsr_plugin.calibration import CalibrationSample, load_processor
from hsr_plugin.exact_head_scores import score_heads
from hsr_plugin.score_records import AttributionCost
from integration.bench.naive_attribution import naive_head_scores
from tests.helpers import (
    load_model,
    response_samples,
    scoring_setup,
    tiny_llama,
)


def _no_response_sample() -> CalibrationSample:
    ids = torch.tensor([[1, 2, 3]])
    response = torch.tensor([[True, False, False]])  # only position 0: never a predicted token
    return CalibrationSample(ids, torch.ones_like(ids), response, 0)


ARCHITECTURES = [
    ("llama", "safety"),  # GQA: 4 heads over 2 KV heads
    ("qwen2", "safety"),
    ("llava", "safety"),
    ("llava", "safety_vl"),  # image prompts, one at a time
    ("qwen2_vl", "safety"),
]


def _ranking(scores):
    return [(s.layer, s.head) for s in sorted(scores, key=lambda s: (-s.score, s.layer, s.head))]


def _refusal_loss(model, samples, pad, scale=None):
    """Summed NLL of the refusal tokens, with an optional hook scaling an o_proj input slice."""
    from hsr_plugin.calibration import prompt_batches

    total = 0.0
    for batch in prompt_batches(samples, 3, pad, positions=True, full=True):
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits[:, :-1].double()
        target = labels[:, 1:]
        keep = target != -100
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        total += float(-(logp * keep).sum())
    return total


def test_non_finite_ablated_outputs_name_the_head(model_dirs, calib_files):
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.calibration import render_samples
    from hsr_plugin.conversations import load_conversations
    from hsr_plugin.exact_head_scores import score_heads

    model = load_model(model_dirs["llama"]).eval()
    samples = render_samples(
        load_conversations(str(calib_files["safety"])),
        load_processor(str(model_dirs["llama"])),
        128,
    )
    blocks = find_attention_blocks(model)
    with torch.no_grad():  # an ablation scales by eps = inf: only the ablated passes break
        with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn with head 0 ablated"):
            score_heads(model, blocks, samples, eps=float("inf"), progress=False)


def test_first_order_scores_skip_batches_without_response_tokens_and_need_some():
    from hsr_plugin.first_order_scores import first_order_unit_scores

    model = tiny_llama(layers=1).eval()
    o_proj = model.model.layers[0].self_attn.o_proj
    args = (torch.device("cpu"), HooksMixin())
    skipped = first_order_unit_scores(
        model, {"o": (o_proj, 2, 8)}, [_no_response_sample(), *response_samples(1)], 1, 0, *args,
        progress=False,
    )  # fmt: skip
    alone = first_order_unit_scores(
        model, {"o": (o_proj, 2, 8)}, response_samples(1), 1, 0, *args, progress=False
    )
    assert torch.equal(skipped["o"], alone["o"]) and bool((alone["o"] != 0).any())
    with pytest.raises(ValueError) as err:
        first_order_unit_scores(
            model, {"o": (o_proj, 2, 8)}, [_no_response_sample()], 1, 0, *args, progress=False,
            what="MLP channel scores",
        )  # fmt: skip
    assert str(err.value) == "HSR MLP channel scores: no response token in the calibration data"


def test_the_subspace_rank_reaches_the_head_scores():
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.exact_head_scores import score_heads

    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    blocks = find_attention_blocks(model)
    scores = {
        rank: [s.score for s in score_heads(model, blocks, response_samples(4), "ships_subspace",
                                             subspace_rank=rank, progress=False)]
        for rank in (1, 2)
    }  # fmt: skip
    assert scores[1] != scores[2]


@pytest.mark.parametrize(
    "method, label",
    [("ships_kl", "HSR head scores (ships_kl)"), ("attribution", "HSR head scores (first order)")],
)
def test_head_scoring_bars_count_every_unit(capsys, method, label):
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.exact_head_scores import score_heads

    model = tiny_llama(layers=1).eval()
    score_heads(model, find_attention_blocks(model), response_samples(3), method, progress=True)
    bar = capsys.readouterr().err
    assert label in bar
    if method == "ships_kl":
        assert "2/2" in bar  # one batch x 2 heads


def test_first_order_scores_show_a_progress_bar_only_when_asked(capsys):
    from hsr_plugin.first_order_scores import first_order_unit_scores

    model = tiny_llama(layers=1).eval()
    o_proj = model.model.layers[0].self_attn.o_proj
    runs = {}
    for progress in (True, False):
        scores = first_order_unit_scores(
            model, {"o": (o_proj, 2, 8)}, response_samples(), 2, 0, torch.device("cpu"),
            HooksMixin(), progress=progress,
        )  # fmt: skip
        runs[progress] = (scores["o"], capsys.readouterr().err)
    assert "HSR unit scores (first order)" in runs[True][1]
    assert "HSR unit scores" not in runs[False][1]
    assert torch.equal(runs[True][0], runs[False][0]) and runs[True][0].shape == (2,)


def test_the_activation_budget_is_a_quarter_of_the_accelerators_free_memory(monkeypatch):
    from hsr_plugin.exact_head_scores import (
        DEFAULT_CPU_BUDGET,
        activation_memory_budget,
        heads_per_pass,
    )

    asked = []

    def memory_info(index):
        asked.append(index)
        return 4003, 8000

    monkeypatch.setattr(torch.accelerator, "get_memory_info", memory_info, raising=False)
    budget = activation_memory_budget(torch.device("cuda", 1), None)
    assert budget == 1000 and type(budget) is int and asked == [1]
    assert activation_memory_budget(torch.device("cuda", 1), 77) == 77
    assert activation_memory_budget(torch.device("cpu"), None) == DEFAULT_CPU_BUDGET
    # per replica: rows x width x (6 hidden + 3 intermediate + heads x width) x 4 bytes
    per_replica = 2 * 3 * (6 * 8 + 3 * 16 + 4 * 3) * 4
    assert heads_per_pass(10 * per_replica + 5, 2, 3, 8, 16, 4) == 10
    assert heads_per_pass(per_replica - 1, 2, 3, 8, 16, 4) == 1  # at least one head a pass


def test_head_scores_default_to_ships_subspace_and_refuse_non_finite_outputs():
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.exact_head_scores import score_heads

    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    blocks = find_attention_blocks(model)
    default = score_heads(model, blocks, response_samples(3), progress=False)
    explicit = score_heads(model, blocks, response_samples(3), "ships_subspace", progress=False)
    assert [s.score for s in default] == [s.score for s in explicit]
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError) as err:
        score_heads(model, blocks, response_samples(3), "ships_kl", progress=False)
    assert str(err.value) == (
        "head attribution: the next-token logits or final states of the intact model on the "
        "safety prompts are not finite (NaN or inf), so its head score would be too"
    )


@pytest.mark.parametrize("arch, data", ARCHITECTURES)
@pytest.mark.parametrize("method", ["ships_subspace", "ships_kl", "reference"])
@pytest.mark.parametrize("budget", [None, 1], ids=["batched-heads", "one-head-per-pass"])
def test_cached_attribution_equals_the_naive_loop(
    model_dirs, calib_files, arch, data, method, budget
):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, arch, data)
    naive = naive_head_scores(model, blocks, samples, method, batch_size=3, pad_id=pad)
    cached = score_heads(
        model, blocks, samples, method, batch_size=3, pad_id=pad, progress=False,
        memory_budget=budget,
    )  # fmt: skip
    assert [(s.layer, s.head, s.kv_group) for s in cached] == [
        (s.layer, s.head, s.kv_group) for s in naive
    ]
    got = torch.tensor([s.score for s in cached], dtype=torch.float64)
    want = torch.tensor([s.score for s in naive], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9, msg="cached != naive scores")
    assert _ranking(cached) == _ranking(naive), f"{arch}/{method}: rankings differ"


@pytest.mark.parametrize("method", ["ships_subspace", "ships_kl"])
def test_cached_attribution_equals_the_naive_loop_with_logit_softcapping(
    model_dirs, calib_files, method
):
    """Gemma-style final_logit_softcapping is part of the re-run tail."""
    import transformers

    _, _, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    config = transformers.Gemma3TextConfig(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        final_logit_softcapping=3.0, pad_token_id=pad,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    blocks = find_attention_blocks(model)
    naive = naive_head_scores(model, blocks, samples, method, batch_size=3, pad_id=pad)
    cached = score_heads(model, blocks, samples, method, batch_size=3, pad_id=pad, progress=False)
    got = torch.tensor([s.score for s in cached], dtype=torch.float64)
    want = torch.tensor([s.score for s in naive], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    assert _ranking(cached) == _ranking(naive)


def test_cached_attribution_counts_its_work(model_dirs, calib_files, capsys):
    """2 layers x 4 heads: the intact pass, 4 heads over both layers, 4 over the last one,
    whatever the batching (every batch adds to the unit and to the work)."""
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    for batch_size, progress in ((32, False), (2, True)):
        cost = AttributionCost()
        score_heads(model, blocks, samples, "ships_kl", batch_size=batch_size, pad_id=pad,
                    progress=progress, cost=cost)  # fmt: skip
        assert cost.forward_equivalents == pytest.approx(1 + 4 * 2 / 2 + 4 * 1 / 2)
    assert "HSR head scores (ships_kl)" in capsys.readouterr().err
    naive = 1 + 2 * 4
    assert cost.forward_equivalents / naive <= 7 / 9


def test_first_order_scores_are_the_derivative_of_zeroing_a_head(model_dirs, calib_files):
    """Score = d/dt L(a - t a_h) at t=0, checked by central finite differences in the test
    (the norms compute in float32 even in a float64 model, hence the step and tolerance)."""
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    model = model.double()
    cost = AttributionCost()
    scores = score_heads(model, blocks, samples, "attribution", pad_id=pad, progress=False,
                         batch_size=3, cost=cost)  # fmt: skip
    # one forward and one backward per batch, over prompt + response (longer than the prompt)
    assert 2 < cost.forward_equivalents < 9 / 2, cost
    block = blocks[1]
    d, delta = block.head_dim, 1e-2

    def scaled(head, t):
        def hook(_module, args):
            x = args[0].clone()
            x[..., head * d : (head + 1) * d] *= 1 - t
            return (x,)

        handle = block.projection("o").register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                return _refusal_loss(model, samples, pad)
        finally:
            handle.remove()

    for head in (0, 3):
        want = (scaled(head, delta) - scaled(head, -delta)) / (2 * delta)
        got = next(s.score for s in scores if (s.layer, s.head) == (1, head))
        assert got == pytest.approx(want, rel=1e-3), f"head {head}: {got} vs {want}"
