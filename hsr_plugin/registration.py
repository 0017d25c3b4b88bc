"""Registering HSRModifier under its name, so llm-compressor recipes (YAML or Python) find it."""

from __future__ import annotations

__all__ = ["ModifierNameTakenError", "register_modifier"]

# the package whose modifiers llm-compressor's factory serves to recipes (experimental included)
SHIPPED_MODIFIERS = "llmcompressor.modifiers"


class ModifierNameTakenError(RuntimeError):
    """llm-compressor itself ships a modifier of this name: registering ours would shadow it
    (the factory serves registered modifiers first)."""


def register_modifier(modifier_class: type) -> None:
    """Add `modifier_class` to llm-compressor's ModifierFactory under its class name, with the
    factory's public calls. Refuses to shadow a modifier of that name that llm-compressor ships.
    """
    from llmcompressor.modifiers.factory import ModifierFactory

    name = modifier_class.__name__
    if name in ModifierFactory.load_from_package(SHIPPED_MODIFIERS):
        raise ModifierNameTakenError(
            f"llm-compressor already ships a modifier named {name}; refusing to override it"
        )
    ModifierFactory.register(name, modifier_class)
