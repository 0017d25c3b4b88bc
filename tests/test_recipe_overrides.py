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

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


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
