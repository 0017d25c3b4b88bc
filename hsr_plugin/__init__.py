"""hsr-plugin: Hierarchical Safety Realignment (HSR) for pruned models, an llm-compressor modifier.

    import hsr_plugin  # registers HSRModifier with llm-compressor's ModifierFactory
    from llmcompressor import oneshot
    oneshot(model=..., recipe="recipes/wanda_hsr.yaml", dataset=..., output_dir=...)

The dependency-free helpers (`hsr_plugin.common`, `hsr_plugin.tables`) are also imported by the
serving virtualenv, which has no llm-compressor: there, importing the package registers nothing
and `hsr_plugin.HSRModifier` says what is missing.
"""

from __future__ import annotations

import importlib.util

__all__ = ["HSRModifier", "__version__"]
__version__ = "0.1.0"

_LLMCOMPRESSOR = importlib.util.find_spec("llmcompressor") is not None


def _register() -> None:
    from llmcompressor.modifiers.factory import ModifierFactory

    ModifierFactory.refresh()
    for registry in ("_main_registry", "_experimental_registry"):
        if "HSRModifier" in getattr(ModifierFactory, registry, {}):
            raise RuntimeError(
                "llm-compressor already ships a modifier named HSRModifier; refusing to override it"
            )
    ModifierFactory.register("HSRModifier", HSRModifier)


if _LLMCOMPRESSOR:
    from hsr_plugin.modifier import HSRModifier

    _register()
else:

    def __getattr__(name: str):
        if name == "HSRModifier":
            raise ImportError(
                "HSRModifier needs llm-compressor: pip install torch==2.13.0 "
                "llmcompressor==0.14.0.1"
            )
        raise AttributeError(f"module 'hsr_plugin' has no attribute {name!r}")
