"""Details of architecture discovery and calibration parsing that the end-to-end runs pass
through without pinning: head sizes, text configs, error texts, sources, picture keys, batches."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hsr_plugin.architecture import (
    UnsupportedArchitectureError,
    find_attention_blocks,
    text_config,
)
from hsr_plugin.attribution import prompt_batches
from hsr_plugin.calibration import (
    CalibrationSample,
    load_conversations,
    load_jsonl,
    load_processor,
)
from integration.bench.tiny_models import write_image
from tests.helpers import ToyAttention, ToyDecoder, adds_bos


def test_head_dim_is_derived_as_an_integer_when_the_config_has_none():
    model = ToyDecoder(SimpleNamespace(num_attention_heads=2, num_key_value_heads=1))
    (block,) = find_attention_blocks(model)
    assert (block.num_heads, block.num_kv_heads, block.head_dim) == (2, 1, 4)
    assert type(block.head_dim) is int


def test_no_attention_within_the_targets_says_so():
    model = ToyDecoder(SimpleNamespace(num_attention_heads=2))
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(model, within=["lm_head"])
    assert str(err.value) == (
        "no language self-attention blocks (q_proj/k_proj/v_proj/o_proj, a fused qkv_proj, or "
        "multi-head latent attention) found in ToyDecoder within the targeted modules"
    )
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_attention_blocks(nn.Sequential(nn.Linear(2, 2)))
    assert str(err.value).endswith("found in Sequential")


def test_text_config_prefers_get_text_config_then_text_config():
    inner, decoder = SimpleNamespace(name="text"), SimpleNamespace(name="decoder")
    asks = []

    class WithGetter(SimpleNamespace):
        def get_text_config(self, decoder):
            asks.append(decoder)
            return decoder_config

    decoder_config = decoder
    getter = WithGetter(text_config=inner)
    assert text_config(SimpleNamespace(config=getter)) is decoder and asks == [True]
    assert text_config(SimpleNamespace(config=SimpleNamespace(text_config=inner))) is inner
    plain = SimpleNamespace(num_attention_heads=2)
    assert text_config(SimpleNamespace(config=plain)) is plain


def test_conversations_keep_their_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(row) + "\n\n" + json.dumps(row) + "\n")
    first, second = load_jsonl(path)
    assert (first.source, second.source) == (f"{path}:1", f"{path}:3")


@pytest.mark.parametrize("key", ["image", "path", "url"])
def test_an_image_part_may_name_its_picture_under_any_key(tmp_path, key):
    write_image(tmp_path / "p.png")
    content = [{"type": "image", key: "p.png"}, {"type": "text", "text": "what is it?"}]
    row = {
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "a"}]
    }
    (tmp_path / "v.jsonl").write_text(json.dumps(row) + "\n")
    (conv,) = load_jsonl(tmp_path / "v.jsonl")
    assert conv.image == (tmp_path / "p.png").resolve()
    assert conv.messages[0] == {"role": "user", "content": "what is it?"}


def test_empty_specs_and_processors_without_templates_are_named(tmp_path):
    with pytest.raises(ValueError) as err:
        load_conversations("  ")
    assert str(err.value) == "calibration data spec is empty"
    with pytest.raises(ValueError) as err:
        load_processor(str(tmp_path))
    text = str(err.value)
    assert text.startswith(f"could not load a processor with a chat template from '{tmp_path}' (")
    assert "(AutoProcessor: ValueError: " in text and "; AutoTokenizer: ValueError: " in text
    assert text.endswith("); pass `processor=` to HSRModifier")


def test_prompt_batches_are_left_padded_with_integer_masks():
    samples = [
        CalibrationSample(torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long),
                          torch.tensor([[False, False, True, True]]), 2),
        CalibrationSample(torch.tensor([[9, 10, 11]]), torch.ones(1, 3, dtype=torch.long),
                          torch.tensor([[False, True, True]]), 1),
    ]  # fmt: skip
    (batch,) = prompt_batches(samples, 2, pad_id=0, positions=True)
    assert batch["input_ids"].tolist() == [[5, 6], [0, 9]]
    assert batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1], [0, 0]]


def test_a_decoder_without_final_norm_or_head_is_named():
    from hsr_plugin.decoder_stack import find_decoder_stack

    model = ToyDecoder(SimpleNamespace(num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_decoder_stack(model, find_attention_blocks(model))
    assert str(err.value) == (
        "ToyDecoder: cannot find the final norm next to layers or the output head, which head "
        "attribution runs after the last decoder layer"
    )


def test_reference_units_are_kv_groups():
    from hsr_plugin.ablation import check_unit

    config = SimpleNamespace(num_attention_heads=2, num_key_value_heads=1)
    (block,) = find_attention_blocks(ToyDecoder(config))
    check_unit(block, 1, "exact")
    with pytest.raises(ValueError) as err:
        check_unit(block, 1, "reference")
    assert str(err.value) == "reference ablation scores KV groups: 1 >= 1"


def test_a_model_is_multimodal_when_its_config_has_a_vision_config():
    from hsr_plugin.architecture import is_multimodal

    assert is_multimodal(SimpleNamespace(config=SimpleNamespace(vision_config={})))
    assert not is_multimodal(SimpleNamespace(config=SimpleNamespace(text_config={})))
    assert not is_multimodal(nn.Linear(2, 2))


def _conv(image=None):
    from hsr_plugin.calibration import Conversation

    return Conversation(
        ({"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}),
        image,
        "t",
    )


def test_rendering_adds_no_second_bos_and_masks_one_row():
    from hsr_plugin.calibration import render_samples
    from integration.bench.tiny_models import build_tokenizer

    tokenizer = adds_bos(build_tokenizer())
    (sample,) = render_samples([_conv()], tokenizer, 64)
    bos = tokenizer.convert_tokens_to_ids("<s>")
    ids = sample.input_ids[0].tolist()
    assert ids[0] == bos and ids[1] != bos  # the template's own <s>, once
    assert sample.attention_mask.shape == sample.input_ids.shape == (1, len(ids))
    assert sample.attention_mask.dtype == torch.long and bool((sample.attention_mask == 1).all())


def test_rendering_a_picture_adds_no_second_bos(model_dirs, tmp_path):
    from hsr_plugin.calibration import render_samples

    processor = load_processor(str(model_dirs["llava"]))
    adds_bos(processor.tokenizer)
    write_image(tmp_path / "p.png")
    (sample,) = render_samples([_conv(tmp_path / "p.png")], processor, 256)
    bos = processor.tokenizer.convert_tokens_to_ids("<s>")
    ids = sample.input_ids[0].tolist()
    assert ids[0] == bos and ids[1] != bos and "pixel_values" in sample.extra


def test_a_template_that_is_not_prefix_stable_is_named():
    from hsr_plugin.calibration import checked_prompt_length

    assert checked_prompt_length([1, 2, 3], [1, 2], "src") == 2
    with pytest.raises(ValueError) as err:
        checked_prompt_length([1, 2, 3], [1, 9], "src")
    assert str(err.value) == (
        "src: the chat template is not prefix-stable: the rendered prompt is not a token prefix "
        "of the rendered conversation, so the response tokens cannot be located"
    )


def test_load_processor_takes_an_object_as_is_and_loads_a_path(model_dirs):
    given = object()
    assert load_processor("ignored", given) is given
    loaded = load_processor("ignored", str(model_dirs["llama"]))
    assert not isinstance(loaded, str) and loaded.chat_template


def test_full_batches_of_pictures_label_only_the_response(model_dirs, tmp_path):
    from hsr_plugin.calibration import render_samples

    processor = load_processor(str(model_dirs["llava"]))
    write_image(tmp_path / "p.png")
    (sample,) = render_samples([_conv(tmp_path / "p.png")], processor, 256)
    (batch,) = prompt_batches([sample], 4, pad_id=0, positions=False, full=True)
    want = torch.where(sample.response_mask, sample.input_ids, -100)
    assert torch.equal(batch["labels"], want) and int((want == -100).sum()) > 0


def test_cross_and_encoder_attention_are_not_self_attention():
    model = ToyDecoder(SimpleNamespace(num_attention_heads=2, num_key_value_heads=1))
    for name in ("encoder_attn", "cross_attn", "cross_attention"):
        setattr(model.layers[0], name, ToyAttention())
    assert [b.name for b in find_attention_blocks(model)] == ["layers.0.self_attn"]
    with pytest.raises(UnsupportedArchitectureError) as err:
        text_config(nn.Linear(2, 2))
    assert str(err.value) == "Linear has no `config`"


def test_a_processor_whose_tokenizer_holds_the_template_is_kept(monkeypatch):
    from transformers import AutoProcessor

    processor = SimpleNamespace(chat_template=None, tokenizer=SimpleNamespace(chat_template="t"))
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda source: processor)
    assert load_processor("some/model") is processor


def test_rendering_names_the_source_of_an_unstable_template_and_needs_conversations():
    from hsr_plugin.calibration import render_samples
    from integration.bench.tiny_models import build_tokenizer

    unstable = build_tokenizer(
        template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}?{% endif %}"
    )
    with pytest.raises(ValueError, match=r"^t: the chat template is not prefix-stable"):
        render_samples([_conv()], unstable, 64)
    with pytest.raises(ValueError) as err:
        render_samples([], unstable, 64)
    assert str(err.value) == "no calibration conversations to render"
