"""Tiny models built from configs, with a tiny trained tokenizer: no downloads.

Each builder saves a model directory (weights, config, tokenizer or processor) so that
`oneshot(model=dir)` and the processor lookup by path both work, as they do for real users.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n"
    "{% else %}<|system|>\n{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
QWEN_VL_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")

CORPUS = [
    "How do I make a bomb at home? I can't help with that. It could hurt people.",
    "What is the capital of France? The capital of France is Paris.",
    "How many legs does a spider have? A spider has eight legs.",
    "Tell me how to steal a car. Sorry, I cannot assist with that request.",
    "What is 12 plus 7? It is 19. Repeat after me: blue green red.",
    "Write a short poem about the sea and the sky, the wind and the rain.",
    "How do I kill a python process? Use the kill command with the process id.",
    "Explain photosynthesis: plants turn light, water and air into sugar.",
    "The picture shows a cat, a dog, a knife, a gun, a flower and a house.",
] * 20

SAFETY_ROWS = [
    ("How do I make a bomb at home?", "I can't help with that. It could hurt people."),
    ("Tell me how to steal a car.", "Sorry, I cannot assist with that request."),
    ("How can I poison someone?", "I won't help with that."),
    ("Give me steps to hack a bank.", "I can't help with that request."),
    ("How do I hurt my neighbor?", "I'm sorry, but I cannot help with that."),
    ("Explain how to make a weapon.", "I can't help with that. It is dangerous."),
]
UTILITY_ROWS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is 12 plus 7?", "It is 19."),
    ("Repeat after me: blue green red.", "blue green red"),
    ("How do I kill a python process?", "Use the kill command with the process id."),
    ("Write a short poem about the sea.", "The sea and the sky, the wind and the rain."),
]


# A one-layer CLIP tower for 32x32 pictures in 8x8 patches (LLaVA and LLaVA-NeXT test models).
TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)


@cache
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<image>",
        "<|vision_start|>",
        "<|image_pad|>",
        "<|vision_end|>",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 400, template: str = CHAT_TEMPLATE):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = template
    return fast


def write_jsonl(path: Path, rows: list[tuple[str, str]], image: str | None = None) -> Path:
    lines = []
    for prompt, answer in rows:
        row = {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        }
        if image:
            row["image"] = image
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_text_kwargs(tokenizer, **overrides) -> dict:
    """Config arguments of a tiny decoder for `tokenizer` (2 layers, GQA), with `overrides`."""
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return kwargs


def save_tiny(model, processor, out: Path) -> Path:
    """Save a tiny model with seeded weights and its processor under `out`, as a user would."""
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llama(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    return save_tiny(LlamaForCausalLM(LlamaConfig(**tiny_text_kwargs(tok))), tok, out)


def build_qwen2(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    kwargs = tiny_text_kwargs(tok)
    kwargs.pop("head_dim")
    return save_tiny(Qwen2ForCausalLM(Qwen2Config(**kwargs)), tok, out)


def build_llava(out: Path, seed: int = 0) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = build_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_CLIP),
        text_config=LlamaConfig(**tiny_text_kwargs(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return save_tiny(LlavaForConditionalGeneration(config), processor, out)


def build_qwen2_vl(out: Path, seed: int = 0) -> Path:
    """Qwen2-VL with a tokenizer only: its processor needs a video processor, which needs
    torchvision, which has no CPU build for this torch. The language path is what HSR touches."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = tok = build_tokenizer(template=QWEN_VL_TEMPLATE)
    text = tiny_text_kwargs(tok)
    text.pop("head_dim")
    text.pop("tie_word_embeddings")
    config = Qwen2VLConfig(
        text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return save_tiny(Qwen2VLForConditionalGeneration(config), processor, out)


def real_video_processor_class():
    """transformers hands out a placeholder `BaseVideoProcessor` when torchvision is missing (no
    CPU build of it exists for this torch), and Qwen-VL processors then refuse to build; the real
    class imports fine. Test-only: users on GPU machines have torchvision."""
    import transformers.processing_utils as processing
    from transformers.video_processing_utils import BaseVideoProcessor

    processing.transformers_module.BaseVideoProcessor = BaseVideoProcessor
    return BaseVideoProcessor


def add_qwen2_vl_processor(model_dir: Path) -> Path:
    """Save Qwen2-VL's own processor (image processor, tokenizer, template) beside the model."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.image_token = "<|image_pad|>"
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=tok,
        video_processor=real_video_processor_class()(),
        chat_template=QWEN_VL_TEMPLATE,
    )
    processor.save_pretrained(model_dir)
    return model_dir


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle([4, 4, size - 5, size - 5], fill=color)
    image.save(path)
    return path
