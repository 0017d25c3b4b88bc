"""hsr-plugin: Hierarchical Safety Realignment (HSR) for pruned models, as an llm-compressor modifier.

    import hsr_plugin  # registers HSRModifier with llm-compressor's ModifierFactory
    from llmcompressor import oneshot
    oneshot(model=..., recipe="recipes/wanda_hsr.yaml", dataset=..., output_dir=...)
"""

from __future__ import annotations

from llmcompressor.modifiers.factory import ModifierFactory

from hsr_plugin.modifier import HSRModifier

__all__ = ["HSRModifier", "__version__"]
__version__ = "0.1.0"


def _register() -> None:
    ModifierFactory.refresh()
    for registry in ("_main_registry", "_experimental_registry"):
        if "HSRModifier" in getattr(ModifierFactory, registry, {}):
            raise RuntimeError("llm-compressor already ships a modifier named HSRModifier; refusing to override it")
    ModifierFactory.register("HSRModifier", HSRModifier)


_register()
