"""hsr_plugin.models: which name a model is known by."""

from __future__ import annotations


def test_the_model_path_prefers_the_models_own_name():
    from types import SimpleNamespace

    from hsr_plugin.models import model_name_or_path

    config = SimpleNamespace(_name_or_path="from-config")
    assert model_name_or_path(SimpleNamespace(name_or_path="own", config=config)) == "own"
    assert model_name_or_path(SimpleNamespace(name_or_path="", config=config)) == "from-config"
    assert model_name_or_path(SimpleNamespace(config=SimpleNamespace())) == ""
