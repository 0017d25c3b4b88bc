"""Which weights belong to the language model: the module-name patterns that mark vision towers
and projectors, and the one language-model sparsity counter (zeros in the decoder layers' 2-D
Linear weights).

Only the standard library is imported here: the serving virtualenv (vLLM, lm-eval) imports this
module without llm-compressor, and the counter takes safetensors' tensors as well as torch's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "VISION_IGNORE",
    "VISION_PATTERNS",
    "is_language_weight",
    "is_vision_module",
    "language_sparsity_counts",
]

# Vision towers, projectors and image-only parts of VLMs: never pruned, scored or restored.
VISION_PATTERNS = (
    r"vision_tower",
    r"vision_model",
    r"\bvisual\b",  # `\b`: a dot or the name's end (module names hold no other separator)
    r"multi_modal_projector",
    r"vision_encoder",
    r"image_newline",
    r"mm_projector",
    r"vision_embed",
)
_VISION = re.compile("|".join(f"(?:{p})" for p in VISION_PATTERNS))
# The same patterns as llm-compressor `ignore` entries (compressed-tensors matches `re:` from the
# start of the module name, hence the leading `.*`).
VISION_IGNORE = tuple(f"re:.*(?:{p})" for p in VISION_PATTERNS)
_DECODER_LAYER = re.compile(r"(?:^|\.)layers\.\d+\.")


def is_vision_module(name: str) -> bool:
    """True for a module (or checkpoint key) of a vision tower or a multimodal projector."""
    return _VISION.search(name) is not None


def is_language_weight(key: str) -> bool:
    """A decoder layer's Linear weight of the language model, by module or checkpoint name.

    `key` is `<module name>.weight` (or a checkpoint key). Embeddings and lm_head sit outside the
    decoder layers and vision modules are excluded; 1-D norms are dropped by the counter's 2-D test.
    """
    return (
        key.endswith(".weight")
        and _DECODER_LAYER.search(key) is not None
        and not is_vision_module(key)
    )


def language_sparsity_counts(named_weights: Iterable[tuple[str, Any]]) -> tuple[int, int]:
    """(zeros, total) over the language decoder's 2-D Linear weights.

    `named_weights` yields (key, tensor) pairs: a model's `f"{module}.weight"` names or a
    checkpoint's keys. Tensors only need `.dim()`, `.numel()` and `== 0`, so both a torch model
    and a safetensors file can be counted without this module importing torch.
    """
    zeros = total = 0
    for key, tensor in named_weights:
        if tensor.dim() != 2 or not is_language_weight(key):
            continue
        zeros += int((tensor == 0).sum())
        total += int(tensor.numel())
    return zeros, total
