"""Tiny random vision-language models of more families, each built from its own transformers
config class and saved with its own processor class (image processor, tokenizer, chat template):
no downloads. Builders are `build_<family>(out) -> out`, like `build_llava` in `tiny_models.py`.

Pictures are 32x32 and vision towers have one layer, so each model builds and runs in seconds.
A family whose pictures cannot be probed on this CPU is in `NO_PICTURES`, with the reason; its
builder, where there is one, saves a tokenizer only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from integration.bench.tiny_models import (
    CHAT_TEMPLATE,
    TINY_CLIP,
    _tokenizer_json,
    real_video_processor_class,
    save_tiny,
    tiny_text_kwargs,
)

__all__ = [
    "NO_PICTURES",
    "build_aya_vision",
    "build_gemma3",
    "build_glm4v",
    "build_idefics3",
    "build_internvl",
    "build_mistral3",
    "build_phi4_multimodal",
    "build_smolvlm",
]

# family -> why its pictures cannot be probed on this CPU (its builder saves a tokenizer only)
NO_PICTURES: dict[str, str] = {
    "mistral3": (
        "PixtralProcessor needs torchvision (image_processing_pixtral imports "
        "torchvision.transforms.v2), which has no CPU build for this torch"
    ),
    "phi4_multimodal": ("Phi4MultimodalImageProcessor needs torchvision and has no PIL variant"),
    "gemma3n": (
        "no tiny model: its vision tower is a timm model (TimmWrapperModel), and timm needs "
        "torchvision, which has no CPU build for this torch"
    ),
}

# A one-layer SigLIP tower for 32x32 pictures in 8x8 patches (16 patches): the CLIP tower's sizes.
TINY_SIGLIP = dict(TINY_CLIP)


def _template(placeholder: str) -> str:
    """`CHAT_TEMPLATE` with the family's image placeholder where the image part is."""
    return CHAT_TEMPLATE.replace("<image>", placeholder)


def _tokenizer(template: str, **named: str):
    """The tiny tokenizer of `tiny_models`, plus the family's own special tokens.

    `named` maps tokenizer attributes (`image_token`, `boi_token`, ...) to tokens: processors
    read them off the tokenizer, and they survive `save_pretrained` as extra special tokens.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(400)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", **named},
    )
    tok.chat_template = template
    return tok


def _real_class(family: str, module: str, name: str):
    """The class `name` of `transformers.models.<family>.<module>`, made loadable by name.

    Without torchvision, transformers 5.17's lazy import structure marks some PIL image
    processors (Idefics3's, SmolVLM's, ...) and video processors as needing it, though their
    modules import fine: `transformers.<name>` is then a placeholder and
    `AutoProcessor.from_pretrained` refuses the saved folder. Setting the real class on the
    family's package and on `transformers` makes the auto lookups find it, in this process (so
    call the builder, or this, before reloading). Test-only, like `real_video_processor_class`:
    users on GPU machines have torchvision.
    """
    import importlib
    import sys

    cls = getattr(importlib.import_module(f"transformers.models.{family}.{module}"), name)
    setattr(sys.modules[f"transformers.models.{family}"], name, cls)
    setattr(sys.modules["transformers"], name, cls)
    return cls


def _pil_image_processor(family: str, name: str):
    return _real_class(family, f"image_processing_pil_{family}", name)


def _ids(tok, *tokens: str) -> list[int]:
    ids = tok.convert_tokens_to_ids(list(tokens))
    assert tok.unk_token_id not in ids, f"not in the vocabulary: {tokens}"
    return ids


def build_gemma3(out: Path, seed: int = 0) -> Path:
    """Gemma3 (VLM): SigLIP tower, pooled to 4 soft tokens per picture, Gemma3 text model."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    # The prompt holds <start_of_image>; the processor expands it to boi, soft tokens, eoi.
    template = _template("<start_of_image>")
    tok = _tokenizer(
        template,
        image_token="<image_soft_token>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
    )
    image_id, boi_id, eoi_id = _ids(tok, "<image_soft_token>", "<start_of_image>", "<end_of_image>")
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tok,
        chat_template=template,
        image_seq_length=4,
    )
    config = Gemma3Config(
        # No final soft-capping, as in the released Gemma3 VLMs: Gemma3ForConditionalGeneration
        # ignores the text config's `final_logit_softcapping` (transformers 5.17).
        text_config=Gemma3TextConfig(**tiny_text_kwargs(tok)),
        vision_config=SiglipVisionConfig(**TINY_SIGLIP),
        mm_tokens_per_image=4,  # 4x4 patches pooled to 2x2
        image_token_index=image_id,
        boi_token_index=boi_id,
        eoi_token_index=eoi_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return save_tiny(Gemma3ForConditionalGeneration(config), processor, out)


# Idefics3 and SmolVLM: a picture is 4x4 patches, shuffled 2x2 into 4 image tokens.
TINY_IDEFICS_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
IDEFICS_TOKENS = dict(
    fake_image_token="<fake_token_around_image>",
    global_image_token="<global-img>",
    end_of_utterance_token="<end_of_utterance>",
)


def build_idefics3(out: Path, seed: int = 0) -> Path:
    """Idefics3: SigLIP-like tower, pixel-shuffle connector, Llama text model."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tok = _tokenizer(CHAT_TEMPLATE, **IDEFICS_TOKENS)
    # No splitting: one 32x32 global picture, so no <row_i_col_j> tokens are needed.
    image_processor = _pil_image_processor("idefics3", "Idefics3ImageProcessorPil")(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=CHAT_TEMPLATE
    )
    return _save_idefics_layout(
        Idefics3Config, Idefics3VisionConfig, Idefics3ForConditionalGeneration, tok, processor,
        out, seed,
    )  # fmt: skip


def _save_idefics_layout(config_class, vision_class, model_class, tok, processor, out, seed):
    """Idefics3's layout (a tiny SigLIP-like tower, pixel-shuffle by 2, a Llama text model),
    shared by Idefics3 and SmolVLM."""
    from transformers import LlamaConfig

    config = config_class(
        vision_config=vision_class(**TINY_IDEFICS_VISION),
        text_config=LlamaConfig(**tiny_text_kwargs(tok)),
        image_token_id=_ids(tok, "<image>")[0],
        scale_factor=2,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return save_tiny(model_class(config), processor, out)


def build_smolvlm(out: Path, seed: int = 0) -> Path:
    """SmolVLM: Idefics3's layout (pixel-shuffle connector) with its own processor."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMProcessor,
        SmolVLMVisionConfig,
    )
    from transformers.models.smolvlm import processing_smolvlm

    # The processor refuses to build without `num2words`, which only spells out the frame count
    # of video prompts; it is not installed here, so a stand-in spells digits.
    if processing_smolvlm.num2words is None:
        processing_smolvlm.num2words = str
    real_video_processor_class()
    video_processor = _real_class("smolvlm", "video_processing_smolvlm", "SmolVLMVideoProcessor")
    tok = _tokenizer(CHAT_TEMPLATE, **IDEFICS_TOKENS)
    image_processor = _pil_image_processor("smolvlm", "SmolVLMImageProcessorPil")(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor(),
        image_seq_len=4,
        chat_template=CHAT_TEMPLATE,
    )
    return _save_idefics_layout(
        SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration, tok, processor, out,
        seed,
    )  # fmt: skip


def build_internvl(out: Path, seed: int = 0) -> Path:
    """InternVL: InternViT tower, pixel-shuffle MLP projector, Qwen2 text model."""
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    # InternVL's own video processor imports torchvision at its top; the base one stands in
    # (pictures never reach it), as for Qwen2-VL in `tiny_models`.
    video_processor = real_video_processor_class()
    # InternVL's image processor is GOT-OCR2's; one 32x32 tile (no cropping into patches).
    image_processor = _pil_image_processor("got_ocr2", "GotOcr2ImageProcessorPil")(
        size={"height": 32, "width": 32}, crop_to_patches=False
    )
    template = _template("<IMG_CONTEXT>")
    tok = _tokenizer(
        template,
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor(),
        image_seq_length=4,  # 4x4 patches, downsampled by 0.5 per side
        chat_template=template,
    )
    text = tiny_text_kwargs(tok)
    text.pop("head_dim")
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=(32, 32),
            patch_size=(8, 8),
        ),
        text_config=Qwen2Config(**text),
        image_token_id=_ids(tok, "<IMG_CONTEXT>")[0],
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return save_tiny(InternVLForConditionalGeneration(config), processor, out)


def build_aya_vision(out: Path, seed: int = 0) -> Path:
    """Aya Vision: SigLIP tower, pixel-shuffle SwiGLU projector, Cohere2 text model."""
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        Cohere2Config,
        SiglipVisionConfig,
    )

    aya_tokens = {
        "start_of_img_token": "<|START_OF_IMG|>",
        "end_of_img_token": "<|END_OF_IMG|>",
        "img_patch_token": "<|IMG_PATCH|>",
        "img_line_break_token": "<|IMG_LINE_BREAK|>",
        "tile_token": "TILE",
        "tile_global_token": "TILE_GLOBAL",
    }
    tok = _tokenizer(CHAT_TEMPLATE, **aya_tokens)
    # Aya's image processor is GOT-OCR2's; one 32x32 tile (no cropping into patches).
    image_processor = _pil_image_processor("got_ocr2", "GotOcr2ImageProcessorPil")(
        size={"height": 32, "width": 32}, crop_to_patches=False
    )
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        img_size=32,
        downsample_factor=2,  # 4x4 patches shuffled 2x2: 4 <|IMG_PATCH|> tokens per tile
        chat_template=CHAT_TEMPLATE,
        **aya_tokens,
    )
    text = tiny_text_kwargs(tok)
    text.pop("head_dim")
    config = AyaVisionConfig(
        vision_config=SiglipVisionConfig(**TINY_SIGLIP),
        text_config=Cohere2Config(**text),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        downsample_factor=2,
        image_token_index=_ids(tok, "<|IMG_PATCH|>")[0],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return save_tiny(AyaVisionForConditionalGeneration(config), processor, out)


def build_mistral3(out: Path, seed: int = 0) -> Path:
    """Mistral3 (Mistral Small 3.1) with a tokenizer only: see `NO_PICTURES["mistral3"]`."""
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )

    # The tokens PixtralProcessor would expand a picture into, so the config's ids are real.
    template = _template("[IMG]")
    tok = _tokenizer(
        template, image_token="[IMG]", image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]"
    )
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            head_dim=16,
            image_size=32,
            patch_size=8,
        ),
        text_config=MistralConfig(**tiny_text_kwargs(tok)),
        image_token_index=_ids(tok, "[IMG]")[0],
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return save_tiny(Mistral3ForConditionalGeneration(config), tok, out)


def build_glm4v(out: Path, seed: int = 0) -> Path:
    """GLM-4.1V: Qwen-VL-like tower (2x2 patch merge), GLM-4 text model with 3-D M-RoPE."""
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vProcessor,
        Glm4vTextConfig,
        Glm4vVisionConfig,
    )

    real_video_processor_class()
    video_processor = _real_class("glm4v", "video_processing_glm4v", "Glm4vVideoProcessor")
    template = _template("<|begin_of_image|><|image|><|end_of_image|>")
    # The processor reads the image and video placeholders off the tokenizer.
    tok = _tokenizer(template, image_token="<|image|>", video_token="<|video|>")
    tok.add_tokens(
        ["<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"],
        special_tokens=True,
    )
    # 32x32 pictures are resized to 56x56: 4x4 patches of 14, merged 2x2 into 4 image tokens.
    image_processor = _pil_image_processor("glm4v", "Glm4vImageProcessorPil")(
        size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56}
    )
    processor = Glm4vProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor(),
        chat_template=template,
    )
    text = tiny_text_kwargs(tok)
    for key in ("head_dim", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        text.pop(key)
    # head_dim 16, half of it rotary: 4 frequencies split over (time, height, width).
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "mrope_section": [1, 1, 2],
    }
    image_id, begin_id, end_id, video_id, vbegin_id, vend_id = _ids(
        tok, "<|image|>", "<|begin_of_image|>", "<|end_of_image|>",
        "<|video|>", "<|begin_of_video|>", "<|end_of_video|>",
    )  # fmt: skip
    config = Glm4vConfig(
        text_config=Glm4vTextConfig(**text),
        vision_config=Glm4vVisionConfig(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            image_size=56,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=64,
        ),
        image_token_id=image_id,
        image_start_token_id=begin_id,
        image_end_token_id=end_id,
        video_token_id=video_id,
        video_start_token_id=vbegin_id,
        video_end_token_id=vend_id,
    )
    torch.manual_seed(seed)
    return save_tiny(Glm4vForConditionalGeneration(config), processor, out)


def build_phi4_multimodal(out: Path, seed: int = 0) -> Path:
    """Phi-4-multimodal with a tokenizer only: see `NO_PICTURES["phi4_multimodal"]`."""
    from transformers import (
        Phi4MultimodalAudioConfig,
        Phi4MultimodalConfig,
        Phi4MultimodalForCausalLM,
        Phi4MultimodalVisionConfig,
    )

    tok = _tokenizer(_template("<|image|>"), image_token="<|image|>", audio_token="<|audio|>")
    image_id, audio_id = _ids(tok, "<|image|>", "<|audio|>")
    text = tiny_text_kwargs(tok)
    text.pop("head_dim")
    config = Phi4MultimodalConfig(
        **text,
        original_max_position_embeddings=256,
        vision_config=Phi4MultimodalVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,  # the tower's features come from its second-to-last layer
            num_attention_heads=2,
            image_size=32,
            crop_size=32,
            patch_size=8,
            image_token_id=image_id,
        ),
        audio_config=Phi4MultimodalAudioConfig(
            hidden_size=32,
            intermediate_size=64,
            num_blocks=2,
            num_attention_heads=2,
            ext_pw_out_channel=32,
            depthwise_separable_out_channel=32,
            nemo_conv_channels=32,
            audio_token_id=audio_id,
        ),
    )
    torch.manual_seed(seed)
    return save_tiny(Phi4MultimodalForCausalLM(config), tok, out)
