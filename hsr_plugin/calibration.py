"""Calibration samples: conversations (`hsr_plugin.conversations`) rendered with the model's
processor and chat template into token ids with the response marked, and batched for scoring
passes (left-padded prompts, or whole conversations with labels on the response).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from hsr_plugin.conversations import Conversation
from hsr_plugin.errors import InvalidInputError

__all__ = [
    "CalibrationSample",
    "batch_to_device",
    "cut_per_token_fields",
    "encode_conversation",
    "load_processor",
    "prompt_batches",
    "render_samples",
]


@dataclass
class CalibrationSample:
    input_ids: torch.Tensor  # (1, T): prompt + response
    attention_mask: torch.Tensor  # (1, T)
    response_mask: torch.Tensor  # (1, T) bool: the last assistant turn's tokens
    prompt_length: int  # tokens before the response: user turn(s) + generation prompt
    extra: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # pixel_values, image_grid_thw, ...

    def prompt_inputs(self) -> dict[str, torch.Tensor]:
        """Model inputs for the prompt part only (head attribution scores these). Every
        per-token field the processor returned is cut with the prompt, whatever its name."""
        return {
            "input_ids": self.input_ids[:, : self.prompt_length],
            "attention_mask": self.attention_mask[:, : self.prompt_length],
            **cut_per_token_fields(self.extra, self.input_ids.shape[1], self.prompt_length),
        }

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.extra}


# Processor outputs that are never per-token, whatever their shape happens to be.
_PICTURE_FIELDS = ("pixel_values", "image_", "video_", "aspect_ratio")


def cut_per_token_fields(
    extra: dict[str, torch.Tensor], seq_len: int, length: int
) -> dict[str, torch.Tensor]:
    """`extra` with every per-token field cut to its first `length` positions.

    A per-token field is one laid out like `input_ids`, (1, seq_len, ...): `mm_token_type_ids`
    (Qwen-VL), `token_type_ids` (Gemma3), `cross_attention_mask` (Mllama) and whatever a
    family adds next. Picture tensors keep their shape.
    """
    return {
        key: value[:, :length]
        if (
            isinstance(value, torch.Tensor)
            and value.dim() >= 2
            and value.shape[0] == 1
            and value.shape[1] == seq_len
            and not key.startswith(_PICTURE_FIELDS)
        )
        else value
        for key, value in extra.items()
    }


def prompt_batches(
    samples: list[CalibrationSample],
    batch_size: int,
    pad_id: int,
    positions: bool,
    full: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Left-padded batches of the prompts (or, `full`, of the whole conversations with `labels`
    on the response tokens). Samples with images run one at a time, unpadded."""
    if any(s.extra for s in samples):
        for s in samples:
            batch = s.model_inputs() if full else s.prompt_inputs()
            if full:
                batch["labels"] = torch.where(s.response_mask, s.input_ids, -100)
            yield batch
        return
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        lengths = [s.input_ids.shape[1] if full else s.prompt_length for s in chunk]
        width = max(lengths)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for i, (s, n) in enumerate(zip(chunk, lengths, strict=True)):
            ids[i, width - n :] = s.input_ids[0, :n]
            mask[i, width - n :] = 1
            labels[i, width - n :] = torch.where(s.response_mask[0, :n], s.input_ids[0, :n], -100)
        batch = {"input_ids": ids, "attention_mask": mask}
        if positions:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if full:
            batch["labels"] = labels
        yield batch


def load_processor(model_or_path: str, processor: Any = None) -> Any:
    """The processor is not in llm-compressor's State: load AutoProcessor, else AutoTokenizer."""
    if processor is not None and not isinstance(processor, (str, Path)):
        return processor
    source = str(processor or model_or_path)
    from transformers import AutoProcessor, AutoTokenizer

    errors = []
    for loader in (AutoProcessor, AutoTokenizer):
        try:
            loaded = loader.from_pretrained(source)
            if getattr(loaded, "chat_template", None) or getattr(
                getattr(loaded, "tokenizer", None), "chat_template", None
            ):
                return loaded
            errors.append(f"{loader.__name__}: no chat template")
        except Exception as err:  # noqa: BLE001 - report every attempt
            errors.append(f"{loader.__name__}: {type(err).__name__}: {err}")
    raise InvalidInputError(
        f"could not load a processor with a chat template from {source!r} ({'; '.join(errors)}); "
        "pass `processor=` to HSRModifier"
    )


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _has_images(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None


def _chat(processor: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def with_image_part(messages: tuple[dict, ...]) -> list[dict]:
    """Multimodal chat templates want content parts; the image goes into the first user turn."""
    out, placed = [], False
    for message in messages:
        parts = [{"type": "text", "text": message["content"]}]
        if message["role"] == "user" and not placed:
            parts.insert(0, {"type": "image"})
            placed = True
        out.append({"role": message["role"], "content": parts})
    return out


def render_samples(
    conversations: Iterable[Conversation], processor: Any, max_seq_length: int
) -> list[CalibrationSample]:
    """Render with the model's chat template, tokenize, and mark the response tokens.

    The prompt (everything before the last assistant turn, plus the generation prompt) must be a
    token prefix of the full conversation. Too-long samples keep their prompt and lose the tail of
    the response; a sample whose prompt alone exceeds max_seq_length is an error.
    """
    if max_seq_length < 2:
        raise InvalidInputError(f"max_seq_length must be >= 2, got {max_seq_length}")
    samples, truncated = [], []
    for conv in conversations:
        sample, cut = _render_one(conv, processor, max_seq_length)
        samples.append(sample)
        if cut:
            truncated.append(conv.source)
    if not samples:
        raise InvalidInputError("no calibration conversations to render")
    if truncated:
        logger.warning(
            f"{len(truncated)} of {len(samples)} calibration conversations are longer than "
            f"max_seq_length={max_seq_length}: their responses were cut (first: {truncated[0]})"
        )
    return samples


def checked_prompt_length(full_ids: list[int], prompt_ids: list[int], source: str) -> int:
    """The prompt's token count, once the prompt is checked to be a prefix of the whole."""
    n_prompt = len(prompt_ids)
    if len(full_ids) <= n_prompt or full_ids[:n_prompt] != prompt_ids:
        raise InvalidInputError(
            f"{source}: the chat template is not prefix-stable: the rendered prompt is not a "
            "token prefix of the rendered conversation, so the response tokens cannot be located"
        )
    return n_prompt


def encode_conversation(
    tokenizer: Any, messages: list[dict], source: str = "conversation"
) -> tuple[list[int], int]:
    """(token ids of the whole conversation, number of prompt tokens), text only.

    The prompt is every turn before the last (the response) plus the generation prompt, rendered
    with the chat template; it must be a token prefix of the whole conversation.
    """
    prompt = _chat(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _chat(tokenizer, messages, add_generation_prompt=False)
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return full_ids, checked_prompt_length(full_ids, prompt_ids, source)


def _render_one(
    conv: Conversation, processor: Any, max_seq_length: int
) -> tuple[CalibrationSample, bool]:
    tokenizer = _tokenizer_of(processor)
    if conv.image is not None and not _has_images(processor):
        raise InvalidInputError(
            f"{conv.source}: this conversation has an image but the processor "
            f"({type(processor).__name__}) has no image processor: this model cannot take images"
        )
    messages = with_image_part(conv.messages) if conv.image is not None else list(conv.messages)
    prompt_text = _chat(processor, messages[:-1], add_generation_prompt=True)
    full_text = _chat(processor, messages, add_generation_prompt=False)
    extra: dict[str, torch.Tensor] = {}
    if conv.image is not None:
        from PIL import Image

        source = io.BytesIO(conv.image) if isinstance(conv.image, bytes) else conv.image
        with Image.open(source) as img:
            image = img.convert("RGB")
        full = processor(
            text=[full_text], images=[image], return_tensors="pt", add_special_tokens=False
        )
        prompt = processor(
            text=[prompt_text], images=[image], return_tensors="pt", add_special_tokens=False
        )
        extra = {
            k: v
            for k, v in full.items()
            if k not in ("input_ids", "attention_mask") and isinstance(v, torch.Tensor)
        }
        full_ids, prompt_ids = full["input_ids"][0], prompt["input_ids"][0]
    else:
        full_ids = torch.tensor(tokenizer(full_text, add_special_tokens=False)["input_ids"])
        prompt_ids = torch.tensor(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    n_prompt = checked_prompt_length(full_ids.tolist(), prompt_ids.tolist(), conv.source)
    if n_prompt >= max_seq_length:
        raise InvalidInputError(
            f"{conv.source}: the prompt has {n_prompt} tokens, max_seq_length is {max_seq_length}"
        )
    cut = len(full_ids) > max_seq_length
    if cut:
        extra = cut_per_token_fields(extra, len(full_ids), max_seq_length)
        full_ids = full_ids[:max_seq_length]
    length = len(full_ids)
    response = torch.zeros(length, dtype=torch.bool)
    response[n_prompt:] = True
    sample = CalibrationSample(
        input_ids=full_ids.unsqueeze(0).long(),
        attention_mask=torch.ones(1, length, dtype=torch.long),
        response_mask=response.unsqueeze(0),
        prompt_length=n_prompt,
        extra=extra,
    )
    return sample, cut


def batch_to_device(
    batch: dict[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """A batch of `prompt_batches`, every tensor moved to `device` (the execution device)."""
    return {k: v.to(device) for k, v in batch.items()}
