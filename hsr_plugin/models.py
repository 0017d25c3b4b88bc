"""Load a model from a Hugging Face id or a local folder: a causal LM, or an image-text-to-text
model when its config has a vision part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_model"]


def load_model(path: str | Path, dtype: Any = "auto"):
    """The model at `path` (hub id or folder) in `dtype`, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    cls = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=dtype).eval()
