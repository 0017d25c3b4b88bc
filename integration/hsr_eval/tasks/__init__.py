"""The hsr_safety lm-eval tasks, installed as `hsr_eval.tasks` (the hsr-eval distribution).

Point lm-eval at them with `--include_path "$(hsr-eval-tasks)"`: the command prints this folder.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_DIR", "TASKS_DIR", "print_include_path"]

TASKS_DIR = Path(__file__).resolve().parent
# The organisms' held-out sets the tasks default to, in the same package (hsr_eval/data).
DATA_DIR = TASKS_DIR.parent / "data"


def print_include_path() -> None:
    """`hsr-eval-tasks`: the folder to pass to `lm-eval run --include_path`."""
    print(TASKS_DIR)
