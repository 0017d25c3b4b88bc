"""hsr_plugin.recipe_overrides: bundled recipes, `--set MODIFIER.FIELD=VALUE` overrides and their
errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hsr_plugin.recipe_overrides import (
    apply_overrides,
    load_recipe_dict,
    parse_override,
    recipe_modifiers,
)
from tests.helpers import compress_tiny

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_unknown_override_target(model_dirs, calib_files, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match="has no QuantizationModifier"):
        compress_tiny(
            model_dirs["llama"],
            tmp_path / "o",
            calib_files,
            "--set",
            "QuantizationModifier.scheme=FP8",
        )


def test_every_shipped_recipe_defines_modifiers_in_stages():
    assert RECIPES, "recipes/ is empty"
    for path in RECIPES:
        names = [name for name, _ in recipe_modifiers(load_recipe_dict(path))]
        assert names, path
        assert path.read_text().startswith("#"), f"{path.name} needs a header comment"
        if path.stem.endswith("_hsr") or "_hsr_" in path.stem:
            assert names.index("HSRModifier") > 0, (
                f"{path.name}: HSR must follow the sparsity stage"
            )
            quant = [i for i, n in enumerate(names) if n == "QuantizationModifier"]
            assert all(i > names.index("HSRModifier") for i in quant), path.name


def test_override_sets_typed_values():
    recipe = {"hsr_stage": {"hsr_modifiers": {"HSRModifier": {"num_heads": 10}}}}
    apply_overrides(recipe, ["HSRModifier.num_heads=4", "HSRModifier.ignore=['re:.*lm_head']"])
    args = recipe["hsr_stage"]["hsr_modifiers"]["HSRModifier"]
    assert args == {"num_heads": 4, "ignore": ["re:.*lm_head"]}


def test_override_of_absent_modifier_names_what_is_there():
    recipe = {"s_stage": {"s_modifiers": {"WandaPruningModifier": {"sparsity": 0.5}}}}
    with pytest.raises(ValueError, match="has no HSRModifier.*WandaPruningModifier"):
        apply_overrides(recipe, ["HSRModifier.num_heads=4"])


@pytest.mark.parametrize("bad", ["num_heads=4", "HSRModifier.num_heads", "=4", "HSRModifier.=4"])
def test_malformed_override_is_rejected(bad):
    with pytest.raises(ValueError, match="Modifier.field=value"):
        parse_override(bad)


def test_recipe_without_stage_suffix_is_rejected(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"sparsity": {"modifiers": {"WandaPruningModifier": {}}}}))
    with pytest.raises(ValueError, match="_stage"):
        load_recipe_dict(path)


@given(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.text(alphabet="abcxyz_", min_size=1, max_size=8),
)
def test_parse_override_roundtrips_ints(value, field):
    assert parse_override(f"M.{field}={value}") == ("M", field, value)


def test_an_override_value_may_hold_equals_signs():
    assert parse_override("HSRModifier.ignore=re:a=b") == ("HSRModifier", "ignore", "re:a=b")


def test_a_modifier_without_arguments_takes_overrides():
    recipe = {"hsr_stage": {"hsr_modifiers": {"HSRModifier": None}}}
    assert recipe_modifiers(recipe) == [("HSRModifier", {})]
    apply_overrides(recipe, ["HSRModifier.num_heads=3"])
    assert recipe["hsr_stage"]["hsr_modifiers"]["HSRModifier"] == {"num_heads": 3}


@pytest.mark.parametrize(
    "content, message",
    [
        ("a: [1, 2\nb: 3\n", "recipe {path}: not valid YAML at line 2, column 2: expected ',' or "
         "']', but got ':'"),
        ("a: \x01\n", "recipe {path}: not valid YAML: unacceptable character #x0001: special "
         "characters are not allowed"),  # a reader error carries no position
        ("a_stage:\n  x: 1\n", "recipe {path} defines no modifiers: llm-compressor reads only "
         "top-level keys ending in '_stage' and, inside them, keys ending in '_modifiers'"),
    ],
    ids=["yaml-error", "yaml-error-without-position", "no-modifiers"],
)  # fmt: skip
def test_recipe_errors_are_exact(tmp_path, content, message):
    from hsr_plugin.recipe_overrides import load_recipe_dict

    path = tmp_path / "recipe.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_recipe_dict(path)
    assert str(err.value) == message.format(path=path)


def test_an_override_for_a_missing_modifier_names_the_ones_present():
    recipe = {"s_stage": {"s_modifiers": {"WandaPruningModifier": {}, "HSRModifier": {}}}}
    with pytest.raises(ValueError) as err:
        apply_overrides(recipe, ["QuantizationModifier.scheme=FP8"])
    assert str(err.value) == (
        "override 'QuantizationModifier.scheme=FP8': the recipe has no QuantizationModifier "
        "(it has: HSRModifier, WandaPruningModifier)"
    )
