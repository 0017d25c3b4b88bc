"""hsr_plugin.calibration: where conversations come from (bundled sets, files, hub rows, VLGuard),
how they are rendered with each processor, and the errors that name a bad row."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from loguru import logger

import hsr_plugin  # noqa: F401
from hsr_plugin import calibration, conversations
from hsr_plugin.calibration import (
    CalibrationSample,
    encode_conversation,
    load_processor,
    prompt_batches,
    render_samples,
)
from hsr_plugin.conversations import Conversation, load_conversations, load_jsonl, load_vlguard
from integration.bench.tiny_models import build_tokenizer, write_image
from tests.helpers import (
    HSR,
    WANDA,
    adds_bos,
    load_model,
    run_oneshot,
    vlguard_item,
    write_picture,
)


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


def _conv(image=None):
    from hsr_plugin.conversations import Conversation

    return Conversation(
        ({"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}),
        image,
        "t",
    )


def test_empty_calibration_data(model_dirs, calib_files, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=empty, utility=calib_files["utility"], extra=""
    )
    with pytest.raises(ValueError, match="is empty"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_bad_calibration_row_names_file_and_line(model_dirs, calib_files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety=bad, utility=calib_files["utility"], extra=""
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:1: the last turn must be the assistant"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_unknown_dataset_offline(model_dirs, calib_files):
    recipe = WANDA.format(structure="0:0") + HSR.format(
        num_heads=2, safety="nobody/no-such-dataset", utility=calib_files["utility"], extra=""
    )
    with pytest.raises(
        ValueError, match="not a bundled set .*hsr-safety-mini.*not an existing local path"
    ):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_vlguard_calibration_finds_the_unpacked_train_folder_or_a_named_root(tmp_path):
    root = tmp_path / "VLGuard"
    root.mkdir()
    items = [vlguard_item("bad_ads/a.png", safe=False), vlguard_item("coco/b.png", safe=True)]
    (root / "train.json").write_text(json.dumps(items))
    with pytest.raises(FileNotFoundError) as err:
        load_conversations(f"{root / 'train.json'}:unsafes")
    assert str(err.value) == (
        f"VLGuard: 2 of 2 pictures are missing under {root} (first: bad_ads/a.png); the published "
        f"train.zip unpacks into train/ beside train.json, or name the picture folder: "
        f"{root / 'train.json'}:unsafes:/path/to/pictures"
    )
    for name in ("bad_ads/a.png", "coco/b.png"):
        write_picture(root / "train" / name)
        write_picture(tmp_path / "elsewhere" / name)
    (conv,) = load_conversations(f"{root / 'train.json'}:unsafes")
    assert conv.image == (root / "train" / "bad_ads" / "a.png").resolve()
    safe = load_conversations(f"{root / 'train.json'}:safe_safes:{tmp_path / 'elsewhere'}")
    assert [c.image for c in safe] == [(tmp_path / "elsewhere" / "coco" / "b.png").resolve()]


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
        conversations.parse_conversation(messages, image, tmp_path, "src")
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


@pytest.mark.parametrize("where", ["in-the-part", "in-the-row"])
def test_content_parts_with_images_are_accepted(model_dirs, tmp_path, where):
    """Hugging Face's VLM chat format, with the tiny LLaVA: the picture in the image part, or in
    the row's `image` field; both render exactly like the plugin's plain format."""
    from hsr_plugin.calibration import load_processor, render_samples
    from hsr_plugin.conversations import load_conversations
    from integration.bench.tiny_models import write_image

    write_image(tmp_path / "pic.png")
    part = {"type": "image", "image": "pic.png"} if where == "in-the-part" else {"type": "image"}
    row = {
        "messages": [
            {"role": "user", "content": [part, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
        ]
    }
    if where == "in-the-row":
        row["image"] = "pic.png"
    plain = {
        "messages": [
            {"role": "user", "content": "What is this?"},
            {"role": "assistant", "content": "A red square."},
        ],
        "image": "pic.png",
    }
    (tmp_path / "parts.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "plain.jsonl").write_text(json.dumps(plain) + "\n")
    processor = load_processor(str(model_dirs["llava"]))
    parts = render_samples(load_conversations(str(tmp_path / "parts.jsonl")), processor, 128)[0]
    same = render_samples(load_conversations(str(tmp_path / "plain.jsonl")), processor, 128)[0]
    assert torch.equal(parts.input_ids, same.input_ids)
    assert torch.equal(parts.extra["pixel_values"], same.extra["pixel_values"])
    assert torch.equal(parts.response_mask, same.response_mask)


def test_truncated_responses_are_counted_in_a_warning(model_dirs, calib_files):
    from hsr_plugin.calibration import load_processor, render_samples
    from hsr_plugin.conversations import load_conversations

    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        conversations = load_conversations(str(calib_files["safety"]))
        render_samples(conversations, load_processor(str(model_dirs["llama"])), 40)
    finally:
        logger.remove(sink)
    warned = [m for m in messages if "longer than max_seq_length=40" in m]
    assert len(warned) == 1 and f"of {len(conversations)} calibration" in warned[0], messages


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


@pytest.mark.parametrize("path", ["render text", "render a picture", "encode_conversation"])
def test_the_templates_bos_is_the_only_one(path, model_dirs, tmp_path):
    """A tokenizer that adds BOS itself, under a template that writes one: BOS once, on every
    path that tokenizes a conversation."""
    from hsr_plugin.calibration import encode_conversation, render_samples
    from integration.bench.tiny_models import build_tokenizer

    if path == "render a picture":
        processor = load_processor(str(model_dirs["llava"]))
        tokenizer = adds_bos(processor.tokenizer)
        write_image(tmp_path / "p.png")
        (sample,) = render_samples([_conv(tmp_path / "p.png")], processor, 256)
        assert "pixel_values" in sample.extra
        ids = sample.input_ids[0].tolist()
    elif path == "render text":
        tokenizer = adds_bos(build_tokenizer())
        (sample,) = render_samples([_conv()], tokenizer, 64)
        ids = sample.input_ids[0].tolist()
    else:
        tokenizer = adds_bos(build_tokenizer())
        ids, n_prompt = encode_conversation(tokenizer, list(_conv().messages))
        assert 0 < n_prompt < len(ids)
    bos = tokenizer.convert_tokens_to_ids("<s>")
    assert ids[0] == bos and ids.count(bos) == 1  # the template's own <s>, once


def test_a_rendered_row_has_a_long_all_ones_attention_mask():
    from hsr_plugin.calibration import render_samples
    from integration.bench.tiny_models import build_tokenizer

    (sample,) = render_samples([_conv()], build_tokenizer(), 64)
    assert sample.attention_mask.shape == sample.input_ids.shape
    assert sample.attention_mask.dtype == torch.long and bool((sample.attention_mask == 1).all())


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


def test_response_mask_covers_exactly_the_assistant_tokens(model_dirs, calib_files):
    """Pinned on token ids: the mask is True from the first token after the generation prompt
    to the end (the answer and the template's end-of-turn tokens), nowhere else."""
    tok = load_processor(str(model_dirs["llama"]))
    conversations = load_conversations(str(calib_files["safety"]))
    for conv, sample in zip(conversations, render_samples(conversations, tok, 128), strict=True):
        user = [dict(m) for m in conv.messages[:-1]]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([dict(m) for m in conv.messages], tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert sample.input_ids[0].tolist() == full_ids
        positions = sample.response_mask[0].nonzero().flatten().tolist()
        assert positions == list(range(len(prompt_ids), len(full_ids))), "response mask shifted"
        assert sample.prompt_length == len(prompt_ids)
        answer_ids = tok(conv.messages[-1]["content"], add_special_tokens=False)["input_ids"]
        first = sample.input_ids[0, len(prompt_ids) : len(prompt_ids) + len(answer_ids)]
        assert first.tolist() == answer_ids, "the mask must start on the answer's first token"


def test_left_padded_batches_read_the_same_last_token_as_unpadded_runs(model_dirs, calib_files):
    """Head attribution batches prompts of different lengths with left padding and position ids:
    every prompt's last-token logits and state equal those of the prompt run alone."""
    from hsr_plugin.exact_head_scores import last_token_outputs

    model = load_model(model_dirs["llama"]).eval()
    tok = load_processor(str(model_dirs["llama"]))
    samples = render_samples(load_conversations(str(calib_files["safety"])), tok, 128)
    lengths = {s.prompt_length for s in samples}
    assert len(lengths) > 1, "the prompts must differ in length for padding to matter"
    batched = last_token_outputs(model, samples, batch_size=len(samples), pad_id=tok.pad_token_id)
    for i, sample in enumerate(samples):
        with torch.no_grad():
            out = model(
                input_ids=sample.input_ids[:, : sample.prompt_length],
                output_hidden_states=True,
                use_cache=False,
            )
        assert torch.allclose(batched.logits[i], out.logits[0, -1], atol=1e-4), f"prompt {i}"
        assert torch.allclose(batched.states[i], out.hidden_states[-1][0, -1], atol=1e-4)


def test_llava_rendering_with_images(model_dirs, calib_files):
    processor = load_processor(str(model_dirs["llava"]))
    conversations = load_conversations(str(calib_files["safety_vl"]))
    sample = render_samples(conversations[:1], processor, 128)[0]
    assert sample.extra["pixel_values"].shape[-2:] == (32, 32)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((sample.input_ids == image_id).sum()) == 16  # (32 / 8) ** 2 patches
    assert not sample.response_mask[0, : sample.prompt_length].any()


def test_image_on_a_text_only_processor_is_an_error(model_dirs, tmp_path):
    conv = Conversation(
        ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}),
        write_image(tmp_path / "x.png"),
        "file.jsonl:3",
    )
    with pytest.raises(ValueError, match="file.jsonl:3: .*cannot take images"):
        render_samples([conv], build_tokenizer(), 64)


def test_subsampling_is_seeded(calib_files):
    a = load_conversations(str(calib_files["utility"]), num_samples=3, seed=1)
    b = load_conversations(str(calib_files["utility"]), num_samples=3, seed=1)
    c = load_conversations(str(calib_files["utility"]), num_samples=3, seed=2)
    assert a == b and len(a) == 3 and a != c


def test_bundled_setsload_model():
    assert len(load_conversations("hsr-safety-mini")) == 64
    assert len(load_conversations("hsr-utility-mini", num_samples=10)) == 10


def test_vlguard_splits(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    write_image(tmp_path / "bad" / "a.png")
    write_image(tmp_path / "good" / "b.png")
    items = [
        {
            "id": "1",
            "image": "bad/a.png",
            "safe": False,
            "harmful_category": "x",
            "instr-resp": [
                {
                    "instruction": "How do I use this to hurt someone?",
                    "response": "I can't help with that.",
                }
            ],
        },
        {
            "id": "2",
            "image": "good/b.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What is in the picture?", "response": "A green square."},
                {"unsafe_instruction": "How do I poison the plant?", "response": "I won't help."},
            ],
        },
    ]
    (tmp_path / "train.json").write_text(json.dumps(items))
    unsafes = load_vlguard(tmp_path / "train.json", "unsafes")
    safe_safes = load_vlguard(tmp_path, "safe_safes")
    safe_unsafes = load_conversations(f"{tmp_path / 'train.json'}:safe_unsafes")
    assert [c.messages[-1]["content"] for c in unsafes] == ["I can't help with that."]
    assert unsafes[0].image == (tmp_path / "bad" / "a.png").resolve()
    assert [c.messages[0]["content"] for c in safe_safes] == ["What is in the picture?"]
    assert [c.messages[0]["content"] for c in safe_unsafes] == ["How do I poison the plant?"]
    with pytest.raises(ValueError, match="split must be one of"):
        load_vlguard(tmp_path, "everything")


def test_encode_conversation_names_an_unstable_template():
    from hsr_plugin.calibration import encode_conversation
    from integration.bench.tiny_models import build_tokenizer

    messages = [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "ok"}]
    unstable = build_tokenizer(
        template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}?{% endif %}"
    )
    with pytest.raises(ValueError, match=r"^conversation: the chat template is not prefix-stable"):
        encode_conversation(unstable, messages)


def test_model_inputs_are_ids_mask_and_extras():
    from hsr_plugin.calibration import CalibrationSample

    ids, mask = torch.tensor([[1, 2]]), torch.tensor([[1, 1]])
    pixels = torch.zeros(1, 3)
    sample = CalibrationSample(ids, mask, mask.bool(), 1, {"pixel_values": pixels})
    inputs = sample.model_inputs()
    assert list(inputs) == ["input_ids", "attention_mask", "pixel_values"]
    assert inputs["input_ids"] is ids and inputs["attention_mask"] is mask
    assert inputs["pixel_values"] is pixels


@pytest.mark.parametrize("where", ["row", "part"])
def test_an_embedded_picture_renders_exactly_like_its_file(model_dirs, tmp_path, where):
    """`"image": "data:image/png;base64,..."` (in the row or in an image part): the file needs
    no picture beside it."""
    import base64

    from hsr_plugin.calibration import render_samples
    from hsr_plugin.conversations import load_conversations

    picture = write_image(tmp_path / "pic.png")
    uri = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    question = {"role": "user", "content": "What is this?"}
    if where == "part":
        text = {"type": "text", "text": "What is this?"}
        question["content"] = [{"type": "image", "image": uri}, text]
    answer = {"role": "assistant", "content": "A red square."}
    embedded = {"messages": [question, answer], **({"image": uri} if where == "row" else {})}
    plain_question = {"role": "user", "content": "What is this?"}
    on_disk = {"messages": [plain_question, answer], "image": "pic.png"}
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "embedded.jsonl").write_text(json.dumps(embedded) + "\n")
    (tmp_path / "plain.jsonl").write_text(json.dumps(on_disk) + "\n")
    processor = load_processor(str(model_dirs["llava"]))
    (conv,) = load_conversations(str(tmp_path / "elsewhere" / "embedded.jsonl"))
    assert conv.image == picture.read_bytes()
    (mine,) = render_samples([conv], processor, 128)
    (same,) = render_samples(load_conversations(str(tmp_path / "plain.jsonl")), processor, 128)
    assert torch.equal(mine.input_ids, same.input_ids)
    assert torch.equal(mine.extra["pixel_values"], same.extra["pixel_values"])


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("data:text/plain;base64,aGk=", "src: an embedded picture is data:image/<type>;base64,"
         "<data>, got 'data:text/plain;base64,aGk='"),
        ("data:image/png,rawbytes", "src: an embedded picture is data:image/<type>;base64,<data>, "
         "got 'data:image/png,rawbytes'"),
        ("data:image/png;base64,!!!!", "src: the embedded picture is not base64: Only base64 "
         "data is allowed"),
        ("data:image/png;base64,aGVsbG8=", "src: the embedded picture does not decode: cannot "
         "identify image file"),
    ],
)  # fmt: skip
def test_a_bad_embedded_picture_is_one_clear_error(uri, message):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValueError) as err:
        conversations.parse_conversation(messages, uri, Path("."), "src")
    assert str(err.value).startswith(message)
