"""hsr_plugin.recipe_checks: HSR needs a pruning stage before it, no quantization before it, and
pruning ended before it restores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import hsr_plugin  # noqa: F401
from hsr_plugin import HSRModifier
from tests.helpers import (
    FP8,
    HSR,
    WANDA,
    hsr_recipe,
    run_oneshot,
)


def test_no_pruning_stage_before_hsr(model_dirs, calib_files):
    with pytest.raises(
        ValueError, match="needs a pruning modifier before it.*after the sparsity stage"
    ):
        run_oneshot(
            model_dirs["llama"], hsr_recipe(calib_files, prune=False), calib_files["utility"]
        )


def test_quantization_before_hsr(model_dirs, calib_files):
    recipe = (
        WANDA.format(structure="0:0")
        + FP8
        + HSR.format(
            num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )
    )
    with pytest.raises(ValueError, match="BEFORE quantization"):
        run_oneshot(model_dirs["llama"], recipe, calib_files["utility"])


def test_hsr_refuses_to_restore_before_pruning_has_ended():
    """The guard: restoring while a pruning modifier before HSR is still running is an error."""
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    from hsr_plugin.recipe_checks import require_pruning_ended

    wanda = WandaPruningModifier(sparsity=0.5)
    assert not wanda.ended_
    with pytest.raises(RuntimeError) as err:
        require_pruning_ended([wanda])
    assert str(err.value) == (
        "HSRModifier would restore weights before WandaPruningModifier has finished pruning. Put "
        "HSR after the sparsity stage and before quantization, and run oneshot with the default "
        "pipeline ('independent')."
    )


def test_the_recipe_order_check_names_what_it_found(monkeypatch):

    import hsr_plugin.recipe_checks as modifier_module
    from hsr_plugin.recipe_checks import earlier_pruning

    hsr = HSRModifier()

    class Other:
        pass

    def session(recipe):
        return lambda: SimpleNamespace(lifecycle=SimpleNamespace(recipe=recipe))

    monkeypatch.setattr(
        modifier_module, "active_session", session(SimpleNamespace(modifiers=[Other(), hsr]))
    )
    with pytest.raises(ValueError) as err:
        earlier_pruning(hsr)
    assert str(err.value) == (
        "HSRModifier needs a pruning modifier before it in the recipe (found Other). Put HSR "
        "after the sparsity stage (e.g. WandaPruningModifier or SparseGPTModifier) and before "
        "quantization."
    )
    monkeypatch.setattr(modifier_module, "active_session", session(SimpleNamespace()))
    with pytest.raises(ValueError, match=r"\(found nothing\)"):
        earlier_pruning(hsr)
