"""Tiny random vision-language models with their own processors: Qwen2.5-VL, LLaVA-NeXT, Mllama,
Qwen3-VL, LLaVA-OneVision and Qwen3-VL-MoE.

Each `build_<family>(out)` builds the family's model from its own transformers config class (a
one-layer vision tower, a two- or three-layer language model) and the family's own processor
class (its image processor, the tiny tokenizer of `tiny_models`, a chat template that puts the
family's image placeholder where the image part is), saves both into `out` and returns `out`, so
that `oneshot(model=out)` and `AutoProcessor.from_pretrained(out)` work as they do for users.
No download: pictures are 28x28 to 64x64 pixels and every model runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from integration.bench.tiny_models import (
    CHAT_TEMPLATE,
    QWEN_VL_TEMPLATE,
    TINY_CLIP,
    build_tokenizer,
    real_video_processor_class,
    save_tiny,
    tiny_text_kwargs,
)

__all__ = [
    "build_llava_next",
    "build_llava_onevision",
    "build_mllama",
    "build_qwen2_5_vl",
    "build_qwen3_vl",
    "build_qwen3_vl_moe",
]

# Qwen-VL pictures: 14-pixel patches merged 2x2, between 28x28 and 56x56 pixels (1 to 4 tokens).
_QWEN_PIXELS = dict(min_pixels=28 * 28, max_pixels=56 * 56)


def _qwen_tokenizer():
    """The tiny tokenizer with Qwen-VL's image placeholder as its image token."""
    tok = build_tokenizer(template=QWEN_VL_TEMPLATE)
    # build_tokenizer names `<image>` the image token; Qwen-VL processors read this attribute
    tok.image_token = "<|image_pad|>"
    return tok


def _qwen_ids(tok) -> dict[str, int]:
    return dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


def build_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    """Qwen2.5-VL (windowed vision attention, M-RoPE text model) with Qwen2_5_VLProcessor."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    tok = _qwen_tokenizer()
    processor = Qwen2_5_VLProcessor(
        # transformers' own mapping gives Qwen2.5-VL Qwen2-VL's image processor
        image_processor=Qwen2VLImageProcessorPil(**_QWEN_PIXELS),
        tokenizer=tok,
        video_processor=real_video_processor_class()(),
        chat_template=QWEN_VL_TEMPLATE,
    )
    text = tiny_text_kwargs(tok)
    text.pop("head_dim")
    text.pop("tie_word_embeddings")
    config = Qwen2_5_VLConfig(
        # head_dim 16 -> 8 rotary frequencies, split over (time, height, width)
        text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[0],
            out_hidden_size=text["hidden_size"],
        ),
        **_qwen_ids(tok),
    )
    torch.manual_seed(seed)
    return save_tiny(Qwen2_5_VLForConditionalGeneration(config), processor, out)


# LLaVA-NeXT / OneVision tile a picture into 32x32 crops plus a 32x32 overview; these grids keep
# a 32x32 picture at one crop.
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def build_llava_next(out: Path, seed: int = 0) -> Path:
    """LLaVA-NeXT (CLIP tower, tiled pictures, Llama text model) with LlavaNextProcessor."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = build_tokenizer(template=CHAT_TEMPLATE)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=TINY_CLIP["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        # CLIP's CLS token, which the "default" strategy drops
        num_additional_image_tokens=1,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**TINY_CLIP),
        text_config=LlamaConfig(**tiny_text_kwargs(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=_PINPOINTS,
    )
    torch.manual_seed(seed)
    return save_tiny(LlavaNextForConditionalGeneration(config), processor, out)


MLLAMA_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "<|image|>")


def build_mllama(out: Path, seed: int = 0, max_tiles: int = 2) -> Path:
    """Mllama (tiled vision tower, a cross-attention text layer at 1 of 3) with MllamaProcessor."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )
    from transformers.models.mllama.image_processing_pil_mllama import (
        get_all_supported_aspect_ratios,
    )

    tok = build_tokenizer(template=MLLAMA_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    # build_tokenizer names `<image>` the image token; MllamaProcessor reads these attributes
    tok.image_token = "<|image|>"
    image_token_id = tok.convert_tokens_to_ids("<|image|>")
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(
            size={"height": 32, "width": 32}, max_image_tiles=max_tiles
        ),
        tokenizer=tok,
        chat_template=MLLAMA_TEMPLATE,
    )
    text = tiny_text_kwargs(tok, num_hidden_layers=3, cross_attention_layers=[1])
    text.pop("tie_word_embeddings")
    config = MllamaConfig(
        text_config=text,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_global_layers=1,
            attention_heads=2,
            image_size=32,
            patch_size=8,
            max_num_tiles=max_tiles,
            # the image processor's tilings (width, height in tiles), in its order
            supported_aspect_ratios=[list(r) for r in get_all_supported_aspect_ratios(max_tiles)],
            # the projector reads the last layer and these intermediate ones, stacked: 2 x 32
            intermediate_layers_indices=[0],
            vision_output_dim=64,
        ),
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    return save_tiny(MllamaForConditionalGeneration(config), processor, out)


def _qwen3_vl_parts(tok):
    """Qwen3-VL's processor and its (text, vision) sub-configs, shared with Qwen3-VL-MoE."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLProcessor

    processor = Qwen3VLProcessor(
        # transformers' own mapping gives Qwen3-VL Qwen2-VL's image processor, with 16-pixel
        # patches: a 32x32 to 64x64 picture is 1 to 4 tokens
        image_processor=Qwen2VLImageProcessorPil(
            patch_size=16, merge_size=2, min_pixels=32 * 32, max_pixels=64 * 64
        ),
        tokenizer=tok,
        video_processor=real_video_processor_class()(),
        chat_template=QWEN_VL_TEMPLATE,
    )
    text = tiny_text_kwargs(tok)
    text.pop("tie_word_embeddings")
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        # head_dim 16 -> 8 rotary frequencies, interleaved over (time, height, width)
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=text["hidden_size"],
        # an 8x8 grid of learned positions, interpolated to the picture's grid
        num_position_embeddings=64,
        # the one vision layer also feeds the first text layer (DeepStack), as in real models.
        # The injection happens between text layers, outside them: HSR's re-run of the decoder
        # from text layer 0 leaves it out (the probe does not see this; its head scores do)
        deepstack_visual_indexes=[0],
    )
    return processor, text, vision


def build_qwen3_vl(out: Path, seed: int = 0) -> Path:
    """Qwen3-VL (DeepStack vision features, interleaved M-RoPE) with Qwen3VLProcessor."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = _qwen_tokenizer()
    processor, text, vision = _qwen3_vl_parts(tok)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tok))
    torch.manual_seed(seed)
    return save_tiny(Qwen3VLForConditionalGeneration(config), processor, out)


# A one-layer SigLIP tower for 32x32 pictures in 8x8 patches: 16 tokens a crop, no CLS token.
_TINY_SIGLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)


def build_llava_onevision(out: Path, seed: int = 0) -> Path:
    """LLaVA-OneVision (SigLIP tower, any-resolution tiles, Qwen2 text model) with its processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = build_tokenizer(template=CHAT_TEMPLATE)
    # the processor and the model name a video placeholder too; give it a token of its own
    tok.add_special_tokens({"additional_special_tokens": ["<video>"]})
    tok.video_token = "<video>"
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS
        ),
        tokenizer=tok,
        video_processor=real_video_processor_class()(),
        num_image_tokens=(_TINY_SIGLIP["image_size"] // _TINY_SIGLIP["patch_size"]) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    text = tiny_text_kwargs(tok)
    text.pop("head_dim")
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_TINY_SIGLIP),
        text_config=Qwen2Config(**text),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=_PINPOINTS,
    )
    torch.manual_seed(seed)
    return save_tiny(LlavaOnevisionForConditionalGeneration(config), processor, out)


def build_qwen3_vl_moe(out: Path, seed: int = 0) -> Path:
    """Qwen3-VL-MoE (Qwen3-VL with a sparse-expert MLP in every text layer), Qwen3VLProcessor."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    tok = _qwen_tokenizer()
    # transformers' own mapping gives Qwen3-VL-MoE Qwen3-VL's processor
    processor, text, vision = _qwen3_vl_parts(tok)
    text.update(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=1,
        # the text config ties by default; the model as a whole does not
        tie_word_embeddings=False,
    )
    config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, **_qwen_ids(tok))
    torch.manual_seed(seed)
    return save_tiny(Qwen3VLMoeForConditionalGeneration(config), processor, out)
