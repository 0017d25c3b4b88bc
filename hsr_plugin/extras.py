"""The optional dependencies of hsr-plugin (its pip extras), checked before the work that needs
them starts, so that a missing one is one line naming the extra, not an ImportError at the end.
"""

from __future__ import annotations

import importlib.util

from hsr_plugin.errors import MissingExtraError

__all__ = ["require_plots"]


def require_plots(command: str) -> None:
    """`hsr report` and `hsr sweep` draw with matplotlib, the `plots` extra."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtraError(
            f"{command} draws its figures with matplotlib, which is not installed: "
            "pip install 'hsr-plugin[plots]'"
        )
