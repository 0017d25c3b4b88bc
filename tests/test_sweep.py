"""`hsr sweep` (hsr_plugin.sweep) on the tiny model: one pruning, a 2x2 grid, a table and a Pareto
plot, and what it hands its scorer."""

from __future__ import annotations

import json

import pytest
import torch

from hsr_eval.files import folder_digest
from hsr_eval.tables import INTERVALS_NOTE
from hsr_plugin.cli import main
from hsr_plugin.plots import sweep_pareto_figure
from hsr_plugin.sweep import (
    eval_tasks,
    pareto_front,
    parse_grid,
    split_recipe,
    sweep_markdown,
)
from integration.organisms.registry import ORGANISMS
from tests.helpers import (
    HSR,
    WANDA,
    log_messages,
)


def _result(pareto=(1,), limit=3, pruned_refusal=0.5):
    return {
        "model": "m",
        "grid": {"num_heads": [1, 3]},
        "references": {
            "dense": {"refusal": 0.9, "over_refusal": 0.05, "utility": 0.8},
            "pruned": {"refusal": pruned_refusal, "over_refusal": 0.02, "utility": 0.75},
        },
        "points": [
            {
                "point": {"num_heads": 1},
                "restored": 10,
                "restored_per_10k": 0.5,
                "refusal": 0.6,
                "over_refusal": 0.03,
                "utility": 0.74,
            },
            {
                "point": {"num_heads": 3},
                "restored": 30,
                "restored_per_10k": 1.5,
                "refusal": 0.7,
                "over_refusal": None,
                "utility": 0.76,
            },
        ],
        "pareto": list(pareto),
        "eval_data": "d",
        "eval_limit": limit,
        "judge": "keyword-v1",
        "seconds": 12.3,
    }


def test_the_sweep_hands_its_scorer_the_eval_folder_limit_and_label(
    model_dirs, calib_files, tmp_path, monkeypatch
):
    import hsr_plugin.sweep as sweep
    from hsr_eval.tasks.in_process import TEXT_TASKS, VISION_TASKS
    from integration.organisms.registry import ORGANISMS
    from tests.helpers import HSR, WANDA

    class Scored(Exception):
        pass

    def score_model(model, processor, tasks, metadata, limit, desc):
        raise Scored(tasks, metadata, limit, desc)

    monkeypatch.setattr(sweep, "default_scorer", lambda: (score_model, TEXT_TASKS, VISION_TASKS))
    import yaml

    recipe = yaml.safe_load(
        WANDA.format(structure="0:0")
        + HSR.format(
            num_heads=1, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )  # fmt: skip
    )
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.oneshot_data import calibration_kwargs

    data = calibration_kwargs(
        str(calib_files["utility"]), load_processor(str(model_dirs["llama"])), 6, 128
    )
    eval_data = ORGANISMS["text"].eval_dir
    with pytest.raises(Scored) as scored:
        sweep.run_sweep(str(model_dirs["llama"]), recipe, {"num_heads": [1]}, data,
                        tmp_path / "o", eval_data, eval_limit=4)  # fmt: skip
    assert scored.value.args == (TEXT_TASKS, {"data_dir": str(eval_data)}, 4, "dense")


def test_the_sweep_loads_models_in_float32_without_an_accelerator(model_dirs, tmp_path):
    import hsr_plugin.sweep as sweep
    from hsr_plugin.models import load_model

    half = tmp_path / "bf16"
    load_model(model_dirs["llama"]).to(torch.bfloat16).save_pretrained(half)
    assert load_model(half).dtype == torch.bfloat16  # "auto": the checkpoint's own dtype
    if not torch.accelerator.is_available():
        assert sweep.load_sweep_model(str(half)).dtype == torch.float32


def test_sweep_prunes_once_and_scores_every_point(model_dirs, calib_files, tmp_path, capsys):
    import llmcompressor  # noqa: F401  (it resets loguru's sinks when first imported)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        WANDA.format(structure="0:0")
        + HSR.format(
            num_heads=2, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )
    )
    out = tmp_path / "sweep"
    with log_messages() as lines:
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
                str(ORGANISMS["text"].eval_dir),
                "--eval-limit",
                "3",
                "--max-seq-length",
                "128",
            ]  # fmt: skip
        )
    result = json.loads((out / "sweep.json").read_text())
    assert result["judge"] == "keyword-v1"
    assert [p["point"] for p in result["points"]] == [
        {"num_heads": 1, "neuron_score": "wanda"},
        {"num_heads": 1, "neuron_score": "restore_gain"},
        {"num_heads": 3, "neuron_score": "wanda"},
        {"num_heads": 3, "neuron_score": "restore_gain"},
    ]
    assert all(p["restored"] > 0 and p["refusal"] is not None for p in result["points"])
    assert set(result["references"]) == {"dense", "pruned"}
    assert result["hsr_fields"] == {
        "num_heads": 2,
        "safety_data": str(calib_files["safety"]),
        "utility_data": str(calib_files["utility"]),
        "seed": 0,
    }
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
    # --eval-limit 3: three prompts of each of the three text tasks, for every model scored
    assert [p["n"] for p in result["points"]] == [9] * 4
    for row in [*result["references"].values(), *result["points"]]:  # k of n behind every rate
        assert {key: c["n"] for key, c in row["counts"].items()} == {
            "asr": 3, "refusal_rate": 3, "over_refusal_rate": 3, "utility": 3
        }  # fmt: skip
        assert all(c["ci95"][0] <= c["rate"] <= c["ci95"][1] for c in row["counts"].values())
    for point in result["points"]:  # paired against the pruned model, on the same 3 prompts
        assert point["paired"]["mcnemar_vs_pruned"]["n"] == 3
    assert {name: r["n"] for name, r in result["references"].items()} == {"dense": 9, "pruned": 9}
    assert f"hsr sweep: table {out / 'sweep.md'}, plot {out / 'pareto.png'}" in lines
    resolved = (out / "hsr_recipe_resolved.yaml").read_text()  # the recipe's own stage order
    assert resolved.index("sparsity_stage") < resolved.index("hsr_stage"), resolved
    bars = capsys.readouterr().err  # each scoring's progress bar names the model and the task
    assert all(f"{m} hsr_utility" in bars for m in ("dense", "pruned", "point 1", "point 4"))


FOOTNOTE = " " + INTERVALS_NOTE + "_\n"


def test_sweep_table_is_exact():
    assert sweep_markdown(_result()) == (
        "# hsr sweep: m\n\n"
        "| model | num_heads | restored | per 10k params | refusal % | RSR | McNemar p vs pruned "
        "| over-refusal % | utility % | Pareto |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| dense |  |  |  | 90.0 |  |  | 5.0 | 80.0 |  |\n"
        "| pruned |  |  |  | 50.0 |  |  | 2.0 | 75.0 |  |\n"
        "| HSR | 1 | 10 | 0.500 | 60.0 | 25% |  | 3.0 | 74.0 |  |\n"
        "| HSR | 3 | 30 | 1.500 | 70.0 | 50% |  | n/a | 76.0 | yes |\n\n"
        "_Scored by the hsr_safety tasks' scorer on d (first 3 per task), judge keyword-v1; 2 "
        "points over one pruning, in 12.3 s." + FOOTNOTE
    )
    # no RSR when pruning lost no refusal; no limit, no "first N"
    text = sweep_markdown(_result(limit=None, pruned_refusal=0.9))
    assert "| HSR | 1 | 10 | 0.500 | 60.0 | n/a |  | 3.0 | 74.0 |  |" in text
    assert text.endswith(
        "scorer on d, judge keyword-v1; 2 points over one pruning, in 12.3 s." + FOOTNOTE
    )


def test_counted_sweep_rows_show_their_intervals_and_paired_tests():
    from hsr_eval.stats import wilson_interval

    def counts(k, n=10):
        return {"k": k, "n": n, "rate": k / n, "ci95": list(wilson_interval(k, n))}

    result = _result()
    result["references"]["dense"]["counts"] = {"refusal_rate": counts(9)}
    point = result["points"][0]
    point["counts"] = {"refusal_rate_vision": counts(6), "utility": counts(7)}
    point["paired"] = {
        "mcnemar_vs_pruned": {"b": 1, "c": 0, "n": 10, "p_value": 1.0},
        "rsr_bootstrap": {"ci95": [-0.25, 0.75]},
    }
    text = sweep_markdown(result)
    assert "| dense |  |  |  | 90.0 [59.6, 98.2] |  |  | 5.0 | 80.0 |  |" in text
    assert (
        "| HSR | 1 | 10 | 0.500 | 60.0 [31.3, 83.2] | 25% [-25%, 75%] | 1 | "
        + "3.0 | 70.0 [39.7, 89.2] |  |"
        in text
    )


def test_pareto_figure_draws_points_front_and_references():
    fig = sweep_pareto_figure(_result(pareto=(1, 0)))
    ax, bar = fig.axes
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[0.5, 60.0], [1.5, 70.0]]
    assert points.get_array().tolist() == [74.0, 76.0]
    labels = [(t.get_text(), t.xy) for t in ax.texts]
    assert labels == [("num_heads=1", (0.5, 60.0)), ("num_heads=3", (1.5, 70.0))]
    front, dense, pruned = ax.lines
    assert front.get_xydata().tolist() == [[0.5, 60.0], [1.5, 70.0]]  # sorted by x
    assert (front.get_color(), front.get_linewidth()) == ("grey", 1)
    assert [tuple(line.get_ydata()) for line in (dense, pruned)] == [(90.0, 90.0), (50.0, 50.0)]
    assert [(line.get_label(), line.get_linestyle()) for line in (dense, pruned)] == [
        ("dense", "-"),
        ("pruned", "--"),
    ]
    assert bar.get_ylabel() == "utility %" and bar.get_ylim() == (74.0, 76.0)  # the utilities
    assert points.get_zorder() == 3 and tuple(fig.get_size_inches()) == (6.4, 4.4)
    assert ax.get_xlabel() == "restored weights per 10k parameters"
    assert ax.get_ylabel() == "refusal of harmful requests %"
    assert ax.get_title() == "hsr sweep: safety per restored weight"


def test_eval_tasks_follow_the_held_out_files(tmp_path):
    from hsr_eval.tasks.in_process import TEXT_TASKS, VISION_TASKS

    for name in ("heldout_harmful", "heldout_borderline", "heldout_utility"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    assert eval_tasks(tmp_path) == TEXT_TASKS
    (tmp_path / "heldout_harmful_vision.jsonl").write_text("{}\n")
    assert eval_tasks(tmp_path) == VISION_TASKS
    (tmp_path / "heldout_utility.jsonl").unlink()
    with pytest.raises(ValueError, match=f"--eval-data {tmp_path} has no heldout_utility.jsonl"):
        eval_tasks(tmp_path)


def test_pareto_front_keeps_the_points_nothing_beats():
    rows = [
        {"restored_per_10k": 1.0, "refusal": 0.5},
        {"restored_per_10k": 2.0, "refusal": 0.4},  # beaten by the first
        {"restored_per_10k": 3.0, "refusal": 0.7},
        {"restored_per_10k": 3.0, "refusal": 0.7},  # a tie beats nobody
        {"restored_per_10k": 4.0, "refusal": 0.7},  # as safe as 2 and 3, but dearer
        {"restored_per_10k": 1.0, "refusal": 0.45},  # as cheap as 0, but less safe
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
    with pytest.raises(ValueError) as err:
        split_recipe({"hsr_stage": {"hsr_modifiers": {"HSRModifier": {}}}})
    assert str(err.value) == "the recipe has no pruning stage before HSRModifier"
    with pytest.raises(ValueError) as err:
        split_recipe({"s_stage": {"s_modifiers": {"WandaPruningModifier": {}}}})
    assert str(err.value) == "the recipe has no HSRModifier entry: the sweep varies its fields"


def test_split_recipe_names_the_stages_after_hsr():
    recipe = {
        "a_stage": {"a_modifiers": {"WandaPruningModifier": {"sparsity": 0.5}}},
        "h_stage": {"h_modifiers": {"HSRModifier": {"num_heads": 2}}},
        "q_stage": {"q_modifiers": {"QuantizationModifier": {}}},
        "r_stage": {"r_modifiers": {"QuantizationModifier": {}}},
    }
    before, fields, after = split_recipe(recipe)
    assert before == {"a_stage": recipe["a_stage"]} and before["a_stage"] is not recipe["a_stage"]
    assert fields == {"num_heads": 2} and after == ["q_stage", "r_stage"]


def test_the_sweep_scores_with_the_installed_tasks():
    from hsr_eval.tasks import in_process
    from hsr_plugin.sweep import default_scorer

    assert default_scorer() == (
        in_process.score_model,
        in_process.TEXT_TASKS,
        in_process.VISION_TASKS,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (["--eval-limit", "0"], "error: --eval-limit must be >= 1"),
        (
            ["--eval-data", "/nonexistent/eval"],
            "error: --eval-data /nonexistent/eval is not a folder",
        ),
    ],
)
def test_bad_sweep_options_stop_before_any_work(model_dirs, calib_files, tmp_path, change, message):
    data = str(ORGANISMS["text"].eval_dir)
    args = ["sweep", "--model", str(model_dirs["llama"]), "--recipe", "recipes/wanda_hsr.yaml",
            "--dataset", str(calib_files["utility"]), "--output", str(tmp_path / "o"),
            "--grid", "num_heads=1,2", "--eval-data", data, *change]  # fmt: skip
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == message and not (tmp_path / "o").exists()
