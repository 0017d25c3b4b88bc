"""Calibration conversations: HSR's safety set D_s, utility set D_u and benign look-alikes,
loaded from a bundled set, a local file or the hub (calibration.py renders them).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsr_plugin.errors import InvalidInputError, MissingInputError

__all__ = [
    "BUNDLED_SETS",
    "Conversation",
    "embedded_picture",
    "load_conversations",
    "load_jsonl",
    "load_vlguard",
    "parse_conversation",
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
