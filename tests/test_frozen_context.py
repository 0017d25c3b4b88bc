"""`head_rerun: last_position` (hsr_plugin.frozen_context): the exact head scores' re-run cut to
the last prompt position, against the intact keys and values of the others.

- Its mask, as a pure function.
- It equals a naive implementation of the same approximation (every layer after the ablated one
  re-run at every position, with the other positions' inputs put back to the intact pass's), on
  GQA text and on a LLaVA with pictures, with several heads per pass or one.
- Heads of the last layer lose nothing: their scores equal exact Ships'.
- On organism-text, the model trained so that its safety lives in attention, it ranks the heads
  as exact Ships does, at a fraction of the forward passes.
- Families: sliding-window caches (Mistral, Gemma2) work while the prompt fits the window;
  Mllama with a picture keeps cross-attention states in its cache and is refused with a line
  that names the way out.
- The field: recorded among the scoring fields, refused with the first-order score.
"""

from __future__ import annotations

import pytest
import torch
from llmcompressor.modifiers.utils.hooks import HooksMixin

from hsr_plugin.ablation import ablate_head
from hsr_plugin.architecture import (
    UnsupportedArchitectureError,
    find_attention_blocks,
    is_multimodal,
)
from hsr_plugin.calibration import prompt_batches
from hsr_plugin.decoder_stack import find_decoder_stack
from hsr_plugin.exact_head_scores import score_heads
from hsr_plugin.frozen_context import frozen_mask
from hsr_plugin.head_score_math import last_token_kl, principal_angle_score
from hsr_plugin.score_records import AttributionCost
from integration.bench.bench_scale import spearman
from tests.helpers import REPO, mllama_with_pictures, scoring_setup

ORGANISM = REPO / "integration" / "organisms" / "organism-text"
TEXT_DATA = REPO / "integration" / "organisms" / "data" / "text"


# ---------------------------------------------------------------- the mask
def test_the_mask_shows_each_copy_the_last_rows_context_and_itself():
    given = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)  # row 0 left-padded
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    full = (causal & given[:, None, :])[:, None]  # (rows, 1, T, T), True: attend
    mask = frozen_mask(full, rows=2, context=3, copies=2, device="cpu")
    assert mask.shape == (2, 1, 2, 5) and mask.dtype == torch.bool
    assert mask[0, 0, :, :3].tolist() == [[False, True, True]] * 2  # the padding stays hidden
    assert mask[:, 0, :, 3:].tolist() == [[[True, False], [False, True]]] * 2  # itself only

    additive = torch.zeros(2, 1, 4, 4).masked_fill(~full, torch.finfo(torch.float32).min)
    float_mask = frozen_mask(additive, rows=2, context=3, copies=2, device="cpu")
    assert torch.equal(float_mask == 0, mask)

    assert frozen_mask(None, rows=2, context=3, copies=2, device="cpu")[:, :, :, :3].all()


# ---------------------------------------------------------------- equal to the naive version
def _naive_frozen_scores(model, blocks, samples, method, pad):
    """Each ablated head: layers l..L-1 at every position, but every layer after l gets the
    intact pass's inputs at the positions before the last; scored at the last position."""
    stack = find_decoder_stack(model, blocks)
    owner = HooksMixin()
    dense, ablated = [], {(b.layer, h): [] for b in blocks for h in range(b.num_heads)}
    with torch.no_grad():
        for batch in prompt_batches(samples, 3, pad, positions=not is_multimodal(model)):
            with stack.capture(owner, {blocks[0].layer}) as captured:
                out = model(**batch, use_cache=False, output_hidden_states=True)
            dense.append((out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()))
            for block in blocks:
                for head in range(block.num_heads):
                    hidden = captured.inputs[block.layer].hidden
                    with ablate_head(block, head, hooks=owner):
                        for index in range(block.layer, len(stack)):
                            given = captured.inputs[index]
                            if index > block.layer:
                                hidden = torch.cat([given.hidden[:, :-1], hidden[:, -1:]], dim=1)
                            hidden = stack.layers[index](hidden, *given.args, **given.kwargs)
                            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                    ablated[(block.layer, head)].append(stack.final_states(hidden))
    dense_logits = torch.cat([d[0] for d in dense])
    dense_states = torch.cat([d[1] for d in dense])
    scores = []
    for key in ablated:
        logits = torch.cat([a[0] for a in ablated[key]])
        states = torch.cat([a[1] for a in ablated[key]])
        if method == "ships_kl":
            scores.append(float(last_token_kl(dense_logits, logits).mean()))
        else:
            scores.append(principal_angle_score(dense_states, states, 1))
    return scores


@pytest.mark.parametrize("arch, data", [("llama", "safety"), ("llava", "safety_vl")])
@pytest.mark.parametrize("method", ["ships_subspace", "ships_kl"])
@pytest.mark.parametrize("budget", [None, 1], ids=["batched-heads", "one-head-per-pass"])
def test_the_last_position_rerun_equals_its_naive_version(
    model_dirs, calib_files, arch, data, method, budget
):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, arch, data)
    want = _naive_frozen_scores(model, blocks, samples, method, pad)
    got = score_heads(
        model, blocks, samples, method, batch_size=3, pad_id=pad, progress=False,
        memory_budget=budget, rerun="last_position",
    )  # fmt: skip
    torch.testing.assert_close(
        torch.tensor([s.score for s in got], dtype=torch.float64),
        torch.tensor(want, dtype=torch.float64),
        rtol=1e-4,
        atol=1e-7,
    )


def test_heads_of_the_last_layer_keep_their_exact_scores(model_dirs, calib_files):
    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "qwen2", "safety")
    exact = score_heads(model, blocks, samples, batch_size=3, pad_id=pad, progress=False)
    last = score_heads(
        model, blocks, samples, batch_size=3, pad_id=pad, progress=False, rerun="last_position"
    )
    depth = max(b.layer for b in blocks)
    pairs = [(e.score, f.score) for e, f in zip(exact, last, strict=True) if e.layer == depth]
    assert pairs
    for e, f in pairs:
        assert f == pytest.approx(e, rel=1e-5, abs=1e-9)


# ---------------------------------------------------------------- on the organism
@pytest.mark.subprocess
def test_on_organism_text_it_ranks_heads_as_exact_ships_at_a_fraction_of_the_cost():
    from hsr_plugin.calibration import load_processor, render_samples
    from hsr_plugin.conversations import load_conversations
    from hsr_plugin.models import load_model

    model = load_model(ORGANISM, torch.float32).eval()
    processor = load_processor(str(ORGANISM))
    conversations = load_conversations(str(TEXT_DATA / "calib_safety.jsonl"), 32, 0)
    samples = render_samples(conversations, processor, 256)
    blocks = find_attention_blocks(model)
    runs = {}
    for rerun in ("all_positions", "last_position"):
        cost = AttributionCost()
        scores = score_heads(
            model, blocks, samples, batch_size=8,
            pad_id=getattr(processor, "tokenizer", processor).pad_token_id or 0,
            progress=False, cost=cost, rerun=rerun,
        )  # fmt: skip
        runs[rerun] = (scores, cost.forward_equivalents)
    (exact, exact_cost), (last, last_cost) = runs["all_positions"], runs["last_position"]

    def top(scores, k):
        ranked = sorted(scores, key=lambda s: (-s.score, s.layer, s.head))
        return {(s.layer, s.head) for s in ranked[:k]}

    assert len(top(exact, 10) & top(last, 10)) >= 8
    assert spearman([s.score for s in exact], [s.score for s in last]) >= 0.9
    assert last_cost <= exact_cost / 5  # 21 forward passes against about 2 (measured)


# ---------------------------------------------------------------- families
@pytest.mark.parametrize("family", ["Mistral", "Gemma2"])
def test_sliding_window_caches_work_while_the_prompt_fits_the_window(tmp_path, family):
    from hsr_plugin.calibration import load_processor, render_samples
    from hsr_plugin.conversations import load_conversations
    from hsr_plugin.models import load_model
    from integration.bench.families import FAMILIES, calibration_files

    folder = FAMILIES[family].build(tmp_path / "model")
    files = calibration_files(tmp_path / "calib")
    model = load_model(folder, torch.float32).eval()
    processor = load_processor(str(folder))
    samples = render_samples(load_conversations(str(files["safety"]), 4, 0), processor, 128)
    blocks = find_attention_blocks(model)
    exact = score_heads(model, blocks, samples, batch_size=2, progress=False)
    last = score_heads(model, blocks, samples, batch_size=2, progress=False, rerun="last_position")
    depth = max(b.layer for b in blocks)
    for e, f in zip(exact, last, strict=True):
        if e.layer == depth:
            assert f.score == pytest.approx(e.score, rel=1e-5, abs=1e-9)


def test_mllama_with_a_picture_is_refused_with_the_way_out(tmp_path):
    model, blocks, samples = mllama_with_pictures(tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as refused:
        score_heads(model, blocks, samples, progress=False, rerun="last_position")
    message = str(refused.value)
    assert "cross-attention states" in message and "head_rerun: all_positions" in message


# ---------------------------------------------------------------- the field
def test_the_field_is_a_scoring_field_and_needs_an_ablating_score():
    from hsr_plugin import HSRModifier

    assert "head_rerun" in HSRModifier.SCORING_FIELDS
    assert HSRModifier(head_rerun="last_position").head_scorer().rerun == "last_position"
    with pytest.raises(ValueError, match="head_rerun='last_position' has no effect here"):
        HSRModifier(head_score="attribution", head_rerun="last_position")
