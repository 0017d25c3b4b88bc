"""Where calibration conversations come from: hub datasets (two row layouts), VLGuard with its
own image root, the image part of multimodal turns, and the organism's training encoder."""

from __future__ import annotations

import json

import pytest

from hsr_plugin import calibration
from hsr_plugin.calibration import encode_conversation, load_conversations, load_vlguard
from integration.bench.tiny_models import build_tokenizer, write_image


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset answering from a dict, recording what it was asked for."""
    import datasets

    asked, tables = [], {}

    def load_dataset(dataset_id, split):
        asked.append((dataset_id, split))
        return tables[dataset_id]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked, tables


def test_hub_rows_with_messages_or_prompt_and_response(fake_hub):
    asked, tables = fake_hub
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    tables["org/chats"] = [{"messages": chat, "prompt": "ignored", "response": "ignored"}]
    tables["org/pairs"] = [{"prompt": "How?", "response": "Like this."}]
    (from_messages,) = load_conversations("org/chats")
    (from_pairs,) = load_conversations("org/pairs:test")
    assert asked == [("org/chats", "train"), ("org/pairs", "test")]
    assert from_messages.messages == tuple(chat) and from_messages.source == "org/chats[0]"
    assert from_pairs.messages == (
        {"role": "user", "content": "How?"},
        {"role": "assistant", "content": "Like this."},
    )
    assert from_pairs.source == "org/pairs[0]" and from_pairs.image is None


def test_vlguard_by_hub_id_says_to_download_it(fake_hub):
    asked, _ = fake_hub
    with pytest.raises(ValueError) as err:
        load_conversations("ys-zong/VLGuard:train")
    assert str(err.value) == (
        "VLGuard ships its images as a zip: download ys-zong/VLGuard once and pass the local "
        "train.json path with a split, e.g. /data/VLGuard/train.json:unsafes"
    )
    assert asked == []


def test_hub_rows_without_a_conversation_are_named(fake_hub):
    _, tables = fake_hub
    tables["org/half"] = [{"prompt": "p", "response": "r"}, {"response": "only a response"}]
    with pytest.raises(ValueError, match=r"^org/half\[1\]: 'messages' must be a non-empty list"):
        load_conversations("org/half")


def test_vlguard_images_resolve_under_the_image_root(tmp_path):
    images = tmp_path / "images"
    (images / "bad").mkdir(parents=True)
    write_image(images / "bad" / "a.png")
    item = {
        "image": "bad/a.png",
        "safe": False,
        "instr-resp": [{"instruction": "Hurt?", "response": "No."}],
    }
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.json").write_text(json.dumps([{"safe": False}, item]))
    (conv,) = load_vlguard(tmp_path / "meta" / "train.json", "unsafes", image_root=images)
    assert conv.image == (images / "bad" / "a.png").resolve()
    assert conv.source == f"{tmp_path / 'meta' / 'train.json'}[1]"
    with pytest.raises(FileNotFoundError, match=r"^VLGuard: 1 of 1 pictures are missing under "):
        load_vlguard(tmp_path / "meta" / "train.json", "unsafes")  # the json's folder has none


def test_the_image_part_goes_into_the_first_user_turn_only():
    messages = (
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    )
    parts = [m["content"] for m in calibration.with_image_part(messages)]
    assert parts == [
        [{"type": "text", "text": "s"}],
        [{"type": "image"}, {"type": "text", "text": "u1"}],
        [{"type": "text", "text": "a1"}],
        [{"type": "text", "text": "u2"}],
        [{"type": "text", "text": "a2"}],
    ]


def test_encode_conversation_marks_the_prompt_tokens():
    tokenizer = build_tokenizer()
    messages = [
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine"},
    ]
    ids, n_prompt = encode_conversation(tokenizer, messages)
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert n_prompt == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < n_prompt < len(ids)


def test_a_vlguard_file_without_a_split_gives_the_unsafe_pairs(tmp_path):
    write_image(tmp_path / "a.png")
    item = {
        "image": "a.png",
        "safe": False,
        "instr-resp": [{"instruction": "Hurt?", "response": "No."}],
    }
    (tmp_path / "train.json").write_text(json.dumps([item]))
    (conv,) = load_conversations(str(tmp_path / "train.json"))
    assert conv.messages[0]["content"] == "Hurt?" and conv.messages[1]["content"] == "No."


@pytest.mark.parametrize(
    "messages, image, message",
    [
        (
            [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}],
            None,
            "src: unknown role in {'role': 'robot', 'content': 'x'}; roles are system, user, "
            "assistant",
        ),
        (["just text", {"role": "assistant", "content": "y"}], None,
         "src: unknown role in 'just text'; roles are system, user, assistant"),
        (
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
             {"role": "assistant", "content": "y"}],
            None,
            'src: an image part without a picture: give it in the part ("image": path) or in '
            "the row's \"image\" field",
        ),
    ],
)  # fmt: skip
def test_malformed_conversations_are_named(tmp_path, messages, image, message):
    with pytest.raises(ValueError) as err:
        calibration.parse_conversation(messages, image, tmp_path, "src")
    assert str(err.value) == message


def test_every_per_token_field_is_cut_with_the_prompt():
    """Qwen-VL's mm_token_type_ids, Gemma3's token_type_ids and Mllama's cross_attention_mask
    are laid out like input_ids; picture tensors are not, even when a size happens to match."""
    import torch

    from hsr_plugin.calibration import CalibrationSample

    length, prompt = 48, 27
    extra = {
        "mm_token_type_ids": torch.arange(length).unsqueeze(0),
        "token_type_ids": torch.ones(1, length, dtype=torch.long),
        "cross_attention_mask": torch.ones(1, length, 1, 4),
        "pixel_values": torch.zeros(1, length, 8),  # a picture tensor of the same width
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
        "pixel_values_videos": torch.zeros(16, 1176),
    }
    sample = CalibrationSample(
        input_ids=torch.arange(length).unsqueeze(0),
        attention_mask=torch.ones(1, length, dtype=torch.long),
        response_mask=torch.arange(length).unsqueeze(0) >= prompt,
        prompt_length=prompt,
        extra=extra,
    )
    inputs = sample.prompt_inputs()
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
        assert inputs[key].shape == (1, prompt), key
    assert torch.equal(inputs["mm_token_type_ids"], torch.arange(prompt).unsqueeze(0))
    assert inputs["cross_attention_mask"].shape == (1, prompt, 1, 4)
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos"):
        assert inputs[key] is extra[key], key
    assert sample.model_inputs()["mm_token_type_ids"] is extra["mm_token_type_ids"]
