"""`hsr sweep` on the tiny model: one pruning, a 2x2 grid, a table and a Pareto plot."""

from __future__ import annotations

import json

import pytest

from hsr_plugin.cli import main
from hsr_plugin.common import folder_digest
from hsr_plugin.sweep import pareto_front, parse_grid, split_recipe
from integration.organisms.registry import ORGANISMS
from tests.helpers import HSR, WANDA


def test_sweep_prunes_once_and_scores_every_point(model_dirs, calib_files, tmp_path):
    import llmcompressor  # noqa: F401  (it resets loguru's sinks when first imported)
    from loguru import logger

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        WANDA.format(structure="0:0")
        + HSR.format(
            num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )
    )
    out = tmp_path / "sweep"
    lines = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        main(
            [
                "sweep",
                "--model",
                str(model_dirs["llama"]),
                "--recipe",
                str(recipe),
                "--dataset",
                str(calib_files["utility"]),
                "--output",
                str(out),
                "--grid",
                "num_heads=1,3",
                "--grid",
                "neuron_score=wanda,restore_gain",
                "--eval-data",
                str(ORGANISMS["text"].data_dir),
                "--eval-limit",
                "3",
                "--max-seq-length",
                "128",
            ]  # fmt: skip
        )
    finally:
        logger.remove(sink)
    result = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in result["points"]] == [
        {"num_heads": 1, "neuron_score": "wanda"},
        {"num_heads": 1, "neuron_score": "restore_gain"},
        {"num_heads": 3, "neuron_score": "wanda"},
        {"num_heads": 3, "neuron_score": "restore_gain"},
    ]
    assert all(p["restored"] > 0 and p["refusal"] is not None for p in result["points"])
    assert set(result["references"]) == {"dense", "pruned"}
    # pruned once: every Linear of the two decoder layers was sparsified exactly once
    sparsified = [line for line in lines if line.startswith("Sparsifying ")]
    assert len(sparsified) == 2 * 7 and len(set(sparsified)) == 14
    assert sum("applied the pruned weights" in line for line in lines) == 4
    # one scoring setting in this grid: heads are scored at the first point only
    assert sum("reuses the head scores" in line for line in lines) == 3
    assert folder_digest(out / "pruned_base") == result["pruned_base"]["digest"]
    table = (out / "sweep.md").read_text()
    assert table.count("\n| HSR |") == 4 and "| dense |" in table and "| pruned |" in table
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["pareto"] == pareto_front(result["points"])


def test_pareto_front_keeps_the_points_nothing_beats():
    rows = [
        {"restored_per_10k": 1.0, "refusal": 0.5},
        {"restored_per_10k": 2.0, "refusal": 0.4},  # beaten by the first
        {"restored_per_10k": 3.0, "refusal": 0.7},
        {"restored_per_10k": 3.0, "refusal": 0.7},  # a tie beats nobody
    ]
    assert pareto_front(rows) == [0, 2, 3]


@pytest.mark.parametrize(
    "items, message",
    [
        (["num_heads"], "write FIELD=VALUE1,VALUE2"),
        (["bogus=1,2"], "HSRModifier has no field 'bogus'"),
        (["num_heads=1", "num_heads=2"], "names num_heads twice"),
        ([], "at least one --grid"),
    ],
)
def test_bad_grids_are_named(items, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(items)


def test_grid_values_are_yaml_scalars():
    grid = parse_grid(["HSRModifier.num_heads=2,4", "max_restored_per_10k=null,0.5"])
    assert grid == {"num_heads": [2, 4], "max_restored_per_10k": [None, 0.5]}


def test_the_recipe_must_prune_before_hsr():
    with pytest.raises(ValueError, match="no pruning stage before HSRModifier"):
        split_recipe({"hsr_stage": {"hsr_modifiers": {"HSRModifier": {}}}})
    with pytest.raises(ValueError, match="no HSRModifier entry"):
        split_recipe({"s_stage": {"s_modifiers": {"WandaPruningModifier": {}}}})
