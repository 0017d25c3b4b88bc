"""Override modifier fields of an llm-compressor YAML recipe from the command line.

`HSRModifier.num_heads=4` sets field `num_heads` of every `HSRModifier` entry in the recipe. The
value is parsed as YAML, so `4` is an int, `[a, b]` a list and `'re:.*x'` a string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hsr_plugin.errors import InvalidInputError, MissingInputError

__all__ = [
    "apply_overrides",
    "bundled_recipes",
    "load_recipe_dict",
    "parse_override",
    "recipe_modifiers",
    "resolve_recipe",
]


def _recipe_dir() -> Path:
    # Installed: the wheel's hsr_plugin/recipes. From a checkout: its recipes/ folder.
    here = Path(__file__).resolve().parent
    installed = here / "recipes"
    return installed if installed.is_dir() else here.parent / "recipes"


def bundled_recipes() -> dict[str, Path]:
    """The recipes that come with hsr-plugin, by name (`wanda_hsr` for wanda_hsr.yaml)."""
    folder = _recipe_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """An existing file as given; otherwise a bundled recipe by name (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    key = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and key in bundled:
        return bundled[key]
    raise MissingInputError(
        f"recipe {name_or_path} does not exist and is not a bundled recipe "
        f"({', '.join(bundled) or 'none found'})"
    )


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `Modifier.field=value` into its parts, with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    modifier, dot, field = key.strip().partition(".")
    if not sep or not dot or not modifier or not field:
        raise InvalidInputError(
            f"override {text!r} must look like Modifier.field=value, "
            "for example HSRModifier.num_heads=4"
        )
    return modifier, field, yaml.safe_load(raw)


def load_recipe_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"recipe {path} does not exist")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InvalidInputError(f"recipe {path}: not valid YAML{where}: {problem}") from None
    if not isinstance(recipe, dict):
        raise InvalidInputError(f"recipe {path} is not a YAML mapping of stages")
    if not recipe_modifiers(recipe):
        raise InvalidInputError(
            f"recipe {path} defines no modifiers: llm-compressor reads only top-level keys "
            "ending in '_stage' and, inside them, keys ending in '_modifiers'"
        )
    return recipe


def recipe_modifiers(recipe: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(class name, args) of every modifier, in recipe order, as llm-compressor reads them."""
    found = []
    for stage_key, stage in recipe.items():
        if not (stage_key.endswith("_stage") and isinstance(stage, dict)):
            continue
        for group_key, group in stage.items():
            if group_key.endswith("_modifiers") and isinstance(group, dict):
                for name, args in group.items():
                    if args is None:
                        args = group[name] = {}
                    found.append((name, args))
    return found


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `Modifier.field=value` overrides in place; every override must hit a modifier."""
    modifiers = recipe_modifiers(recipe)
    for text in overrides:
        name, field, value = parse_override(text)
        hits = [args for mod_name, args in modifiers if mod_name == name]
        if not hits:
            present = ", ".join(sorted({n for n, _ in modifiers}))
            raise InvalidInputError(
                f"override {text!r}: the recipe has no {name} (it has: {present})"
            )
        for args in hits:
            args[field] = value
    return recipe
