"""hsr-plugin: Hierarchical Safety Realignment (HSR) for pruned models, an llm-compressor modifier.

    import hsr_plugin  # registers HSRModifier with llm-compressor's ModifierFactory
    from llmcompressor import oneshot
    oneshot(model=..., recipe="recipes/wanda_hsr.yaml", dataset=..., output_dir=...)

Importing the package imports `hsr_plugin.modifier`, which hands HSRModifier to llm-compressor's
public `ModifierFactory.register`; so llm-compressor is imported with it (a few seconds). A recipe
that names HSRModifier needs `import hsr_plugin` first, in the process that parses it
(`hsr compress` does it for you). Where llm-compressor is not installed, the package still
imports, and `hsr_plugin.HSRModifier` says what to install.
"""

from __future__ import annotations

import importlib.util

__all__ = ["HSRModifier", "__version__"]
__version__ = "0.1.0"


def _llmcompressor_pin() -> str:
    """The pin of the installed distribution's metadata (pyproject.toml is its one place)."""
    from importlib import metadata

    try:
        requires = metadata.requires("hsr-plugin") or []
    except metadata.PackageNotFoundError:
        return "hsr-plugin"
    pins = [r for r in requires if r.startswith("llmcompressor")]
    return f"'{pins[0]}'" if pins else "llmcompressor"


def __getattr__(name: str):
    if name == "HSRModifier":  # only reached without llm-compressor (below)
        raise ImportError(f"HSRModifier needs llm-compressor: pip install {_llmcompressor_pin()}")
    raise AttributeError(f"module 'hsr_plugin' has no attribute {name!r}")


if importlib.util.find_spec("llmcompressor") is not None:
    from hsr_plugin.modifier import HSRModifier  # its last line registers it
