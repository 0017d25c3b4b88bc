"""Write an organism folder atomically, with its manifest (organism.json)."""

from __future__ import annotations

import json
from pathlib import Path

from hsr_plugin.report import published_dir

__all__ = ["published_dir", "write_manifest"]


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "organism.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
