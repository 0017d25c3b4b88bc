"""hsr_plugin.registration: HSRModifier under its name in llm-compressor's ModifierFactory, never
shadowing a shipped one."""

from __future__ import annotations

import pytest


def _created(factory):
    """What a recipe naming `HSRModifier` gets from llm-compressor's factory."""
    return factory.create("HSRModifier", allow_registered=True, allow_experimental=False)


def test_registration_refuses_to_shadow_a_modifier_llmcompressor_ships(monkeypatch):
    from llmcompressor.modifiers.factory import ModifierFactory

    from hsr_plugin import HSRModifier
    from hsr_plugin.registration import ModifierNameTakenError, register_modifier

    shipped = {"HSRModifier": object}
    monkeypatch.setattr(ModifierFactory, "load_from_package", staticmethod(lambda path: shipped))
    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    with pytest.raises(ModifierNameTakenError, match="already ships a modifier named HSRModifier"):
        register_modifier(HSRModifier)
    with pytest.raises(ValueError):  # nothing was registered
        _created(ModifierFactory)
    shipped = {}
    register_modifier(HSRModifier)
    assert isinstance(_created(ModifierFactory), HSRModifier)


def test_registration_names_the_modifier(monkeypatch):
    from llmcompressor.modifiers.factory import ModifierFactory

    from hsr_plugin import HSRModifier
    from hsr_plugin.registration import register_modifier

    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    with pytest.raises(ValueError):
        _created(ModifierFactory)
    register_modifier(HSRModifier)
    assert isinstance(_created(ModifierFactory), HSRModifier)
