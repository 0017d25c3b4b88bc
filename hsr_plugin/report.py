"""The HSR report (schema version 1): what was scored, selected and restored, and how long it took.

    {"schema_version": 1, "config": {...every field...}, "model": {...},
     "heads": [{layer, head, kv_group, score}, ...]    # sorted by score, descending
     "selected_heads": [[layer, head], ...],
     "restored": [{module, restored, pruned_in_slice, candidates}, ...],
     "totals": {restored, language_params, pruned_params, restored_per_10k_params, restored_per_10k_pruned},
     "timing_s": {phase: seconds}, "notes": [...]}
`candidates` counts the neuron-level candidates inside the selected heads' slices.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from loguru import logger

__all__ = ["SCHEMA_VERSION", "totals", "published_dir", "write_json_atomic", "write_text_atomic", "log_summary"]

SCHEMA_VERSION = 1


def totals(restored_rows: list[dict], language_params: int, pruned_params: int) -> dict[str, Any]:
    restored = sum(row["restored"] for row in restored_rows)
    return {
        "restored": restored,
        "language_params": language_params,
        "pruned_params": pruned_params,
        "restored_per_10k_params": 1e4 * restored / language_params if language_params else 0.0,
        "restored_per_10k_pruned": 1e4 * restored / pruned_params if pruned_params else 0.0,
    }


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to a temporary sibling, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


@contextmanager
def published_dir(target: str | Path) -> Iterator[Path]:
    """Yields a hidden staging folder next to `target`; on success it replaces `target`,
    on error it is removed, so readers never see a half-written folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def log_summary(report: dict[str, Any]) -> None:
    cfg, tot = report["config"], report["totals"]
    top = ", ".join(f"L{h['layer']}H{h['head']}={h['score']:.4g}" for h in report["heads"][:5])
    lines = [
        "HSR summary",
        f"  head score {cfg['head_score']} | neuron score {cfg['neuron_score']} | slicing {cfg['head_slicing']}",
        f"  top heads: {top}",
        f"  selected ({len(report['selected_heads'])}): {', '.join(f'L{l}H{h}' for l, h in report['selected_heads'])}",
        f"  restored {tot['restored']:,} weights of {tot['pruned_params']:,} pruned "
        f"({tot['restored_per_10k_params']:.4f} per 10k params, {tot['restored_per_10k_pruned']:.4f} per 10k pruned)",
        "  timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in report["timing_s"].items()),
    ]
    lines += [f"  note: {note}" for note in report.get("notes", [])]
    logger.info("\n".join(lines))
