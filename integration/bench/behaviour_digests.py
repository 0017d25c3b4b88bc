"""Digests of what HSR does on organism-text in each mode: the weights after the run and the
report without its timings. A refactor that keeps behaviour bit-identical leaves every digest
unchanged: record them before the first refactor commit, and compare after each.

    .venv/bin/python -m integration.bench.behaviour_digests --out before.json
    .venv/bin/python -m integration.bench.behaviour_digests --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
ORGANISM = REPO / "integration" / "organisms" / "organism-text"
DATA = REPO / "integration" / "organisms" / "data" / "text"

PRUNE = """
sparsity_stage:
  sparsity_modifiers:
    {pruner}:
      sparsity: 0.5
      mask_structure: '{structure}'
      targets: ['re:.*layers\\.\\d+$']
      ignore: ['re:.*lm_head']
"""
HSR = """
hsr_stage:
  hsr_modifiers:
    HSRModifier:
      num_heads: 4
      safety_data: '{safety}'
      utility_data: '{utility}'
      num_samples: 32
      seed: 0
{extra}"""

# mode -> (pruner, mask structure, extra HSR fields)
MODES: dict[str, tuple[str, str, str]] = {
    "paper default": ("WandaPruningModifier", "0:0", ""),
    "snip": ("WandaPruningModifier", "0:0", "      neuron_score: snip\n"),
    "sparsegpt": ("SparseGPTModifier", "0:0", "      neuron_score: sparsegpt\n"),
    "restore_gain budget": (
        "WandaPruningModifier",
        "0:0",
        "      neuron_score: restore_gain\n      max_restored_per_10k: 20\n",
    ),
    "restore_gain rounds": (
        "WandaPruningModifier",
        "0:0",
        "      neuron_score: restore_gain\n      max_restored_per_10k: 20\n      rounds: 3\n",
    ),
    "heads + mlp": (
        "WandaPruningModifier",
        "0:0",
        "      units: [heads, mlp]\n      num_mlp_channels: 16\n",
    ),
    "N:M 2:4 (SparseGPT 2:4)": (
        "SparseGPTModifier",
        "2:4",
        "      neuron_score: sparsegpt\n      preserve_nm: '2:4'\n",
    ),
    "attribution heads": ("WandaPruningModifier", "0:0", "      head_score: attribution\n"),
    "reference": (
        "WandaPruningModifier",
        "0:0",
        "      head_score: reference\n      head_slicing: reference\n",
    ),
}


def _digest_weights(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def _digest_report(report: dict) -> str:
    kept = {k: v for k, v in report.items() if k != "timing_s"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def run_mode(mode: str) -> dict:
    from integration.bench.families import run_oneshot

    pruner, structure, extra = MODES[mode]
    recipe = PRUNE.format(pruner=pruner, structure=structure) + HSR.format(
        safety=DATA / "calib_safety.jsonl", utility=DATA / "calib_utility.jsonl", extra=extra
    )
    torch.manual_seed(0)
    model, report = run_oneshot(ORGANISM, recipe, DATA / "calib_utility.jsonl", num_samples=32)
    return {
        "weights": _digest_weights(model),
        "report": _digest_report(report),
        "restored": report["totals"]["restored"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the digests here")
    parser.add_argument("--compare", type=Path, help="compare with digests written earlier")
    args = parser.parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    digests = {}
    for mode in MODES:
        digests[mode] = run_mode(mode)
        got = digests[mode]
        print(
            f"{mode:28s} restored {got['restored']:6d}  weights {got['weights'][:16]}  "
            f"report {got['report'][:16]}"
        )
    if args.out:
        args.out.write_text(json.dumps(digests, indent=2) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = [m for m in MODES if before.get(m) != digests[m]]
        print("identical in every mode" if not changed else f"CHANGED: {changed}")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
