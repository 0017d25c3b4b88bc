"""hsr_plugin.registration: HSRModifier under its name in llm-compressor's ModifierFactory, never
shadowing a shipped one."""

from __future__ import annotations

import pytest


def _created(factory):
    """What a recipe naming `HSRModifier` gets from llm-compressor's factory."""
    return factory.create("HSRModifier", allow_registered=True, allow_experimental=False)


def test_registration_refuses_a_shipped_hsrmodifier_and_tolerates_a_missing_registry(
    monkeypatch,
):
    from llmcompressor.modifiers.factory import ModifierFactory

    from hsr_plugin import HSRModifier
    from hsr_plugin.registration import register_modifier

    monkeypatch.setattr(ModifierFactory, "refresh", classmethod(lambda cls: None))
    monkeypatch.setattr(ModifierFactory, "_main_registry", {"HSRModifier": object}, raising=False)
    with pytest.raises(RuntimeError, match="already ships a modifier named HSRModifier"):
        register_modifier(HSRModifier)
    monkeypatch.setattr(ModifierFactory, "_main_registry", {}, raising=False)
    monkeypatch.delattr(ModifierFactory, "_experimental_registry", raising=False)
    register_modifier(HSRModifier)
    assert isinstance(_created(ModifierFactory), HSRModifier)


def test_registration_names_the_modifier(monkeypatch):
    from llmcompressor.modifiers.factory import ModifierFactory

    from hsr_plugin import HSRModifier
    from hsr_plugin.registration import register_modifier

    monkeypatch.setattr(ModifierFactory, "refresh", classmethod(lambda cls: None))
    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    with pytest.raises(ValueError):
        _created(ModifierFactory)
    register_modifier(HSRModifier)
    assert isinstance(_created(ModifierFactory), HSRModifier)
