"""Turn a conversational JSONL (the plugin's calibration format) into a dataset for `oneshot`.

Pruning modifiers calibrate on whole conversations rendered with the model's own chat template;
images, when present, go through the processor. Rows are pre-tokenized, so `oneshot` gets a
`datasets.Dataset` plus a batch-size-1 collator, as llm-compressor expects multimodal data.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset

from hsr_plugin.calibration import render_samples
from hsr_plugin.conversations import load_conversations
from hsr_plugin.errors import InvalidInputError

__all__ = ["calibration_kwargs", "conversation_dataset", "single_sample_collator"]


def calibration_kwargs(
    spec: str,
    processor: Any,
    num_samples: int | None = 128,
    max_seq_length: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """`oneshot`'s calibration arguments for a plugin-format JSONL (or any set HSR can load).

        oneshot(model=..., processor=processor, recipe=..., **calibration_kwargs(path, processor))

    Gives `dataset` (pre-tokenized with the model's chat template and processor, images
    included), the batch-size-1 `data_collator` it needs, `batch_size=1` and
    `num_calibration_samples`.
    """
    dataset = conversation_dataset(spec, processor, num_samples, max_seq_length, seed)
    return {
        "dataset": dataset,
        "data_collator": single_sample_collator,
        "batch_size": 1,
        "num_calibration_samples": len(dataset),
    }


def conversation_dataset(
    spec: str, processor: Any, num_samples: int | None, max_seq_length: int, seed: int = 0
) -> Dataset:
    conversations = load_conversations(spec, num_samples=num_samples, seed=seed)
    samples = render_samples(conversations, processor, max_seq_length)
    rows = []
    for sample in samples:
        row = {
            "input_ids": sample.input_ids.tolist(),
            "attention_mask": sample.attention_mask.tolist(),
        }
        for key, value in sample.extra.items():
            row[key] = value.tolist() if isinstance(value, torch.Tensor) else value
        rows.append(row)
    return Dataset.from_list(rows)


def single_sample_collator(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Rows are stored exactly as the processor returned one sample (batch dim included)."""
    if len(batch) != 1:
        raise InvalidInputError(f"this collator takes batch_size=1, got a batch of {len(batch)}")
    return {key: torch.as_tensor(value) for key, value in batch[0].items()}
