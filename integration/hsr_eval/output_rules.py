"""The one rule for where a command may write, shared by `hsr compress` and `hsr-compare`.

An output folder is never an input, never holds an input (replacing it would delete that input)
and never lies inside one (the input would no longer be what was saved). Paths are compared
after resolving symlinks. Standard library only: the serving virtualenv imports it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_apart_from_inputs", "foreign_entries"]


def check_apart_from_inputs(
    output: str | Path, inputs: Iterable[tuple[str, str | Path]], option: str = "--output"
) -> None:
    """SystemExit with a one-line error when `output` is, contains or lies inside an input.

    `inputs` are (label, path) pairs; the label names the input in the error (`--model`,
    `--models dense`)."""
    output = Path(output).expanduser().resolve()
    for label, raw in inputs:
        path = Path(raw).expanduser().resolve()
        if output == path:
            raise SystemExit(f"error: {option} {output} is the input {label}: choose a new folder")
        if output in path.parents:
            raise SystemExit(
                f"error: {option} {output} contains the input {label} ({path}): replacing it "
                "would delete that input; choose a new folder"
            )
        if path in output.parents:
            raise SystemExit(
                f"error: {option} {output} lies inside the input {label} ({path}): the input is "
                "never written into; choose a folder outside it"
            )


def foreign_entries(folder: str | Path, own: Iterable[str]) -> list[str]:
    """Names in `folder` that are not among `own` (what a command writes there), sorted; hidden
    staging and lock files of the command's own atomic writers count as its own."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = set(own)
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in mine and not entry.name.startswith(".")
    )
