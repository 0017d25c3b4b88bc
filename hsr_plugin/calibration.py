"""Calibration data for HSR: the safety set D_s and the utility set D_u.

A set is named by one string, resolved in this order:
1. a bundled set (`hsr-safety-mini`, `hsr-utility-mini`, shipped in hsr_plugin/data);
2. a local path: a `.jsonl` file in our format, or a VLGuard `train.json` (append `:split`,
   e.g. `/data/VLGuard/train.json:unsafes`, and `:picture-root` where the pictures are not in
   `train/` beside it, the folder the published `train.zip` unpacks into);
3. a Hugging Face dataset id with conversational rows, optionally `id:split`
   (e.g. `HuggingFaceH4/ultrachat_200k:train_sft`). VLGuard is not read from the hub: it ships
   its pictures as archives, so download it once and pass the local `train.json`.

Our JSONL row:
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "image": "optional path relative to the file, or a data:image/...;base64, URI"}
The last assistant turn is the response whose tokens are scored.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from hsr_plugin.errors import InvalidInputError, MissingInputError

__all__ = [
    "BUNDLED_SETS",
    "Conversation",
    "CalibrationSample",
    "cut_per_token_fields",
    "load_conversations",
    "load_jsonl",
    "load_vlguard",
    "encode_conversation",
    "render_samples",
    "load_processor",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_SETS = {path.stem: path for path in sorted(DATA_DIR.glob("*.jsonl"))}
VLGUARD_SPLITS = ("unsafes", "safe_safes", "safe_unsafes")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict, ...]
    image: Path | bytes | None = None  # a picture file, or an embedded picture's encoded bytes
    source: str = ""  # "file:line", for error messages


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


# ----------------------------------------------------------------------------- loading
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


def load_conversations(
    spec: str, num_samples: int | None = None, seed: int = 0
) -> list[Conversation]:
    """Resolve `spec` (bundled name, local path, or hub id) and subsample deterministically."""
    if not spec or not str(spec).strip():
        raise InvalidInputError("calibration data spec is empty")
    spec = str(spec)
    path_part, _, split = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    split, _, image_root = split.partition(":")
    if spec in BUNDLED_SETS:
        conversations = load_jsonl(BUNDLED_SETS[spec])
    elif Path(path_part).exists():
        path = Path(path_part)
        if path.suffix == ".jsonl":
            conversations = load_jsonl(path)
        elif path.suffix == ".json" or path.is_dir():
            conversations = load_vlguard(path, split or "unsafes", image_root or None)
        else:
            raise InvalidInputError(
                f"{path}: expected a .jsonl file in the HSR format or a VLGuard train.json"
            )
    else:
        conversations = _load_hub(path_part, split)
    if not conversations:
        raise InvalidInputError(f"calibration set {spec!r} is empty")
    if num_samples is not None:
        if num_samples < 1:
            raise InvalidInputError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples < len(conversations):
            picked = sorted(random.Random(seed).sample(range(len(conversations)), num_samples))
            conversations = [conversations[i] for i in picked]
    return conversations


def load_jsonl(path: str | Path) -> list[Conversation]:
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file: calibration data is one JSONL file")
    out = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInputError(
                f"{where}: not UTF-8 text ({err.reason} at byte {err.start})"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where}: a row must be a JSON object with 'messages'")
        out.append(parse_conversation(row.get("messages"), row.get("image"), path.parent, where))
    return out


def _flatten_parts(content: Any, where: str) -> tuple[Any, list[Any]]:
    """Content parts (Hugging Face's VLM chat format) -> (text, the image parts' pictures).

    `[{"type": "image"}, {"type": "text", "text": "..."}]`: text parts are joined; an image part
    may carry its picture (`image`, `path` or `url`) or leave it to the row's `image` field.
    """
    if not isinstance(content, list):
        return content, []
    texts, pictures = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind in ("image", "image_url"):
            picture = part.get("image") or part.get("path") or part.get("url")
            if isinstance(picture, dict):  # {"type": "image_url", "image_url": {"url": ...}}
                picture = picture.get("url")
            pictures.append(picture or part.get("image_url", {}).get("url"))
        else:
            raise InvalidInputError(
                f"{where}: a content part is {{'type': 'text', 'text': ...}} or "
                f"{{'type': 'image'[, 'image': path]}}, got {part!r}"
            )
    return "\n".join(t for t in texts if t.strip()), pictures


def embedded_picture(uri: str, where: str) -> bytes:
    """The encoded picture of a `data:image/<type>;base64,<data>` URI (checked: it decodes)."""
    header, comma, data = uri.partition(",")
    if not (comma and header.startswith("data:image/") and header.endswith(";base64")):
        raise InvalidInputError(
            f"{where}: an embedded picture is data:image/<type>;base64,<data>, got {uri[:40]!r}"
        )
    try:
        encoded = base64.b64decode(data, validate=True)
    except binascii.Error as error:
        raise InvalidInputError(f"{where}: the embedded picture is not base64: {error}") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(encoded)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"{where}: the embedded picture does not decode: {error}") from None
    return encoded


def parse_conversation(messages: Any, image: Any, root: Path, where: str) -> Conversation:
    """One validated conversation from a row's `messages` (and picture), named by `where`."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError(
            f"{where}: 'messages' must be a non-empty list of {{role, content}}"
        )
    flat, pictures = [], []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidInputError(
                f"{where}: unknown role in {message!r}; roles are {', '.join(ROLES)}"
            )
        content, found = _flatten_parts(message.get("content"), where)
        pictures += found
        if not isinstance(content, str) or not content.strip():
            raise InvalidInputError(f"{where}: empty content in the {message['role']} turn")
        flat.append({"role": message["role"], "content": content})
    messages = flat
    if len(pictures) > 1:
        raise InvalidInputError(
            f"{where}: {len(pictures)} image parts; one picture per conversation"
        )
    if pictures:
        named = pictures[0]
        if named and image and named != image:
            raise InvalidInputError(
                f"{where}: the image part names {named!r}, the row names {image!r}"
            )
        image = named or image
        if not image:
            raise InvalidInputError(
                f"{where}: an image part without a picture: give it in the part "
                '("image": path) or in the row\'s "image" field'
            )
    if messages[-1]["role"] != "assistant":
        raise InvalidInputError(
            f"{where}: the last turn must be the assistant's response (it is scored)"
        )
    if not any(m["role"] == "user" for m in messages):
        raise InvalidInputError(f"{where}: no user turn")
    image_path = None
    if image is not None and not isinstance(image, str):
        raise InvalidInputError(f"{where}: 'image' must be a path (a string), got {image!r}")
    if image and image.startswith("data:"):
        image_path = embedded_picture(image, where)
    elif image:
        image_path = (root / image).resolve()
        if not image_path.is_file():
            raise InvalidInputError(f"{where}: image {image_path} does not exist")
    return Conversation(
        tuple({"role": m["role"], "content": m["content"]} for m in messages), image_path, where
    )


def load_vlguard(
    path: str | Path, split: str, image_root: str | Path | None = None
) -> list[Conversation]:
    """VLGuard train format, split as the paper builds it.

    `unsafes`: unsafe images with their instruction and (refusal) response; `safe_safes`: safe
    images with the safe instruction and helpful response; `safe_unsafes`: safe images with the
    unsafe instruction and refusal.
    """
    if split not in VLGUARD_SPLITS:
        raise InvalidInputError(
            f"VLGuard split must be one of {', '.join(VLGUARD_SPLITS)}, got {split!r}"
        )
    path = Path(path)
    if path.is_dir():
        path = path / "train.json"
    if not path.is_file():
        raise MissingInputError(f"VLGuard file {path} does not exist")
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, list):
        raise InvalidInputError(f"{path}: VLGuard train.json must be a JSON list")
    root = Path(image_root) if image_root else _vlguard_picture_root(path, items)
    named = [item["image"] for item in items if isinstance(item, dict) and item.get("image")]
    missing = [name for name in named if not (root / name).is_file()]
    if missing:
        # One line, before any work: the usual cause is the picture folder, not the rows.
        raise MissingInputError(
            f"VLGuard: {len(missing)} of {len(named)} pictures are missing under {root} (first: "
            f"{missing[0]}); the published train.zip unpacks into train/ beside train.json, or "
            f"name the picture folder: {path}:{split}:/path/to/pictures"
        )
    out = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        pairs = item.get("instr-resp") or []
        unsafe_image = item.get("safe") is False
        for pair in pairs:
            if split == "unsafes" and unsafe_image:
                instruction = pair.get("instruction")
            elif split == "safe_safes" and not unsafe_image:
                instruction = pair.get("safe_instruction")
            elif split == "safe_unsafes" and not unsafe_image:
                instruction = pair.get("unsafe_instruction")
            else:
                continue
            if instruction:
                messages = [
                    {"role": "user", "content": instruction},
                    {"role": "assistant", "content": pair.get("response", "")},
                ]
                image = item.get("image")
                out.append(
                    parse_conversation(messages, str(root / image) if image else None, root, where)
                )
    return out


def _vlguard_picture_root(path: Path, items: list) -> Path:
    """`train/` beside train.json when the pictures are there (the published archive's layout),
    else the json's own folder."""
    unpacked = path.parent / "train"
    first = next((i["image"] for i in items if isinstance(i, dict) and i.get("image")), None)
    if unpacked.is_dir() and (first is None or (unpacked / first).is_file()):
        return unpacked
    return path.parent


def _load_hub(dataset_id: str, split: str) -> list[Conversation]:
    names = ", ".join(BUNDLED_SETS) or "(none)"
    try:
        import datasets

        if "vlguard" in dataset_id.lower():
            raise InvalidInputError(
                f"VLGuard ships its images as a zip: download {dataset_id} once and pass the local "
                "train.json path with a split, e.g. /data/VLGuard/train.json:unsafes"
            )
        data = datasets.load_dataset(dataset_id, split=split or "train")
    except ValueError:
        raise
    except Exception as err:  # hub unreachable, unknown id, ...
        raise InvalidInputError(
            f"calibration data {dataset_id!r} is not a bundled set ({names}), not an existing "
            "local path, "
            f"and could not be loaded from the Hugging Face hub: {type(err).__name__}: {err}"
        ) from None
    out = []
    for index, row in enumerate(data):
        messages = row.get("messages")
        if messages is None and "prompt" in row and "response" in row:
            messages = [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["response"]},
            ]
        out.append(parse_conversation(messages, None, Path("."), f"{dataset_id}[{index}]"))
    return out


# ----------------------------------------------------------------------------- rendering
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
