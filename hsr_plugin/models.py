"""Load a model from a Hugging Face id or a local folder the way its family's users do: with
the image-text-to-text auto class when its config has a vision part (LLaVA, Qwen-VL, Mllama,
...; llm-compressor's own VLM examples load them so), as a causal LM otherwise.

`oneshot` given a path always loads a causal LM, which no VLM is, so `hsr compress` and
`hsr sweep` load the model here, on the CPU as `oneshot` would, and hand `oneshot` the object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["auto_model_class", "load_model", "model_name_or_path"]


def auto_model_class(config: Any):
    """The transformers auto class that loads a model of `config`: image-text-to-text for the
    families transformers registers there, causal LM for the rest (Phi-4-multimodal has a
    vision config but is registered as a causal LM only)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def load_model(path: str | Path, dtype: Any = "auto"):
    """The model at `path` (hub id or folder) in `dtype`, in eval mode. A compressed-tensors
    quantized checkpoint is decompressed, as `oneshot` does with one it loads itself."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    quantization = getattr(config, "quantization_config", None) or {}
    if isinstance(quantization, dict) and quantization.get("quant_method") == "compressed-tensors":
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    return auto_model_class(config).from_pretrained(path, **kwargs).eval()


def model_name_or_path(model) -> str:
    """Where a loaded model came from: its own `name_or_path`, else its config's."""
    return getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")
