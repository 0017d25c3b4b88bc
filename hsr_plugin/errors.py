"""What the user can fix, as exceptions: the `hsr` command prints these as one `error:` line
with exit code 2; every other exception is a bug and keeps its traceback.

Each class also derives from the built-in exception it replaces, so `except ValueError` (and
pydantic's validators, which turn a `ValueError` into a field error) still catch it.
"""

from __future__ import annotations

__all__ = [
    "HSRUserError",
    "InvalidInputError",
    "MissingExtraError",
    "MissingInputError",
    "StageOrderError",
]


class HSRUserError(Exception):
    """A problem with the user's model, recipe, data or command line, named in one line."""


class InvalidInputError(HSRUserError, ValueError):
    """An input that exists but cannot be used as given (a bad field, row, file or setting)."""


class MissingInputError(HSRUserError, FileNotFoundError):
    """An input path that does not exist."""


class MissingExtraError(HSRUserError, ImportError):
    """An optional dependency a command needs (a pip extra of hsr-plugin) is not installed."""


class StageOrderError(HSRUserError, RuntimeError):
    """The recipe runs HSR where its stages cannot work (before pruning ended, never
    restoring, a base folder that changed under a sweep)."""
