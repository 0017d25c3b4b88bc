"""Write an organism folder atomically: build it in a hidden sibling, then swap it into place.

The same pattern as hsr_plugin.report.published_dir, kept separate on purpose: the serving venv
imports integration.organisms (to render the VL organism's pictures) and cannot import
hsr_plugin, whose package import needs llmcompressor.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def published_dir(target: Path) -> Iterator[Path]:
    """Yields a staging folder; on success it replaces `target`, on error it is removed."""
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


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "organism.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
