"""Registering HSRModifier under its name, so llm-compressor recipes (YAML or Python) find it."""

from __future__ import annotations

from hsr_plugin.errors import StageOrderError

__all__ = ["register_modifier"]


def register_modifier(modifier_class: type) -> None:
    """Add `modifier_class` to llm-compressor's ModifierFactory under its class name.

    Refuses to shadow a modifier of that name that llm-compressor itself ships.
    """
    from llmcompressor.modifiers.factory import ModifierFactory

    name = modifier_class.__name__
    ModifierFactory.refresh()
    for registry in ("_main_registry", "_experimental_registry"):
        if name in getattr(ModifierFactory, registry, {}):
            raise StageOrderError(
                f"llm-compressor already ships a modifier named {name}; refusing to override it"
            )
    ModifierFactory.register(name, modifier_class)
