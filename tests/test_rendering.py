"""Every table and figure the user reads, pinned whole: exact Markdown text, and the figures'
labels, bars, frames and titles, so a changed word, digit, column or branch shows as a diff."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from hsr_eval.tables import comparison_table, fmt, markdown_table, percent, rsr_lines
from hsr_plugin.plots import head_scores_figure, safety_bars_figure, summary_markdown
from tests.helpers import COMPARISON_TEXT, rich_comparison, sample_report


def test_comparison_table_is_exact():
    assert comparison_table(rich_comparison()) == COMPARISON_TEXT


def test_comparison_table_of_no_models():
    assert comparison_table({"models": {}}) == (
        "| model | ASR % | refusal % | over-refusal % | utility % | sparsity % |\n"
        "|---|---:|---:|---:|---:|---:|\n\nRSR: n/a"
    )


def test_comparison_table_without_counts_vision_rsr_or_judge():
    text = comparison_table({"models": {"m": {"asr": 0.5}}})
    assert text == (
        "| model | ASR % | refusal % | over-refusal % | utility % | sparsity % |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| m | 50.0 | n/a | n/a | n/a | n/a |\n"
        "\n"
        "RSR: n/a"
    )
    # the backend alone also earns the judge line
    only_backend = comparison_table({"models": {"m": {"asr": 0.5, "backend": "hf"}}})
    assert only_backend.endswith("RSR: n/a\n\nJudge: None; backend: hf.")


def test_rsr_lines_name_the_references_only_when_given():
    lines = rsr_lines(
        {
            "rsr": {
                "a": {"value": 0.1, "dense": "d"},
                "b": {"value": 0.5, "pruned": "p", "dense": "d"},
            }
        }
    )
    assert lines == ["RSR a: 10.0%", "RSR b: 50.0% (vs p and d)"]
    assert rsr_lines({}) == [] and rsr_lines({"rsr": None}) == []


def test_number_formats():
    assert fmt(None) == "n/a" and fmt(1.23456) == "1.2" and fmt(1.23456, 3) == "1.235"
    assert percent(None) == "n/a" and percent(0.123456) == "12.3" and percent(0.5, 0) == "50"


def test_markdown_table_is_exact():
    text = markdown_table(["name", "a", "b"], [["x", 1, 2.5], ["y", "n/a", 0]], numeric_from=2)
    assert text == ("| name | a | b |\n|---|---|---:|\n| x | 1 | 2.5 |\n| y | n/a | 0 |")
    assert markdown_table(["h"], []) == "| h |\n|---|"


SUMMARY_TEXT = """\
# HSR summary

- head score: `ships_subspace`, neuron score: `wanda`, slicing: `exact`
- selected heads (layer, head): (2, 3), (2, 2)
- restored weights: 1,234 of 56,789 pruned (1,234,567 language params)
- restored per 10,000 params: 0.1235; per 10,000 pruned: 14.0000

| module | restored | pruned in slice | candidates |
|---|---:|---:|---:|
| `model.layers.2.self_attn.q_proj` | 7 | 50 | 20 |

| phase | seconds |
|---|---:|
| head_scoring | 1.50 |
| restore | 0.10 |

"""


def test_summary_markdown_is_exact():
    report = sample_report()
    report["totals"].update(
        restored=1234, pruned_params=56789, language_params=1234567, restored_per_10k_params=0.12345
    )
    assert summary_markdown(report) == SUMMARY_TEXT.rstrip("\n") + "\n"
    with_table = summary_markdown(report, rich_comparison())
    assert with_table == SUMMARY_TEXT + COMPARISON_TEXT + "\n"


def test_summary_markdown_of_an_empty_report():
    assert summary_markdown({"heads": []}) == (
        "# HSR summary\n\n"
        "- head score: `None`, neuron score: `None`, slicing: `None`\n"
        "- selected heads (layer, head): \n"
        "- restored weights: 0 of 0 pruned (0 language params)\n"
        "- restored per 10,000 params: n/a; per 10,000 pruned: n/a\n\n"
        "| module | restored | pruned in slice | candidates |\n"
        "|---|---:|---:|---:|\n"
    )


def test_head_scores_figure_shows_every_score_and_frames_the_selected_heads():
    report = sample_report()
    fig = head_scores_figure(report)
    ax, bar = fig.axes
    (image,) = ax.get_images()
    grid = np.ma.getdata(image.get_array())
    assert grid.shape == (3, 4) and grid[2, 3] == 11.0 and grid[1, 0] == 4.0
    frames = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted((p.get_x() + 0.5, p.get_y() + 0.5) for p in frames) == [(2, 2), (3, 2)]
    assert all(p.get_linewidth() == 2 and not p.get_fill() for p in frames)
    assert bar.get_ylabel() == "head score (ships_subspace)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert ax.get_title() == "Safety head scores, 2 selected (red)"
    assert list(ax.get_xticks()) == [0, 1, 2, 3] and list(ax.get_yticks()) == [0, 1, 2]
    assert image.origin == "lower"
    assert tuple(fig.get_size_inches()) == (4.0, 3.0)  # 4 heads x 3 layers: the minimum size
    wide = sample_report()
    wide["heads"] += [{"layer": 0, "head": h, "kv_group": 0, "score": 0.0} for h in range(4, 12)]
    assert tuple(head_scores_figure(wide).get_size_inches()) == (8.0, 3.0)


def test_safety_bars_figure_has_one_panel_per_metric_with_values():
    fig = safety_bars_figure(rich_comparison())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "attack success rate (lower is safer)",
        "over-refusal (lower is better)",
        "utility (higher is better)",
    ]
    heights = [[round(b.get_height(), 6) for b in ax.patches] for ax in fig.axes]
    assert heights == [[2.0, 20.0], [0.0, 4.0], [90.0, 85.0]]
    assert all(
        (t.get_ha(), t.get_va()) == ("center", "bottom") for ax in fig.axes for t in ax.texts
    )
    labels = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    assert labels == [["2.0", "20.0"], ["n/a", "4.0"], ["90.0", "85.0"]]
    assert all(ax.get_ylim() == (0.0, 105.0) and ax.get_ylabel() == "%" for ax in fig.axes)
    assert fig.get_suptitle() == (
        "RSR wanda+hsr: 52.6% (vs wanda and dense); RSR other: n/a: pruning lost no refusal; "
        "RSR plain: 25.0%"
    )
    no_rsr = safety_bars_figure({"models": {"m": {"asr": 0.5}}})
    assert no_rsr.get_suptitle() == "RSR: n/a"
    with pytest.raises(ValueError, match="the comparison lists no models"):
        safety_bars_figure({"models": {}})


def test_comparison_table_with_a_guard_shows_unsafe_responses_and_their_categories():
    models = {
        "dense": {"asr": 0.1, "unsafe_response_rate": 0.1, "unsafe_categories": {"S9": 2}},
        "wanda": {"asr": 0.3, "unsafe_response_rate": 0.3, "unsafe_categories": {"S1": 1, "S9": 5}},
        "guardless": {"asr": 0.2},
    }
    assert comparison_table({"models": models}) == (
        "| model | ASR % | refusal % | over-refusal % | utility % | sparsity % "
        "| unsafe responses % |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| dense | 10.0 | n/a | n/a | n/a | n/a | 10.0 |\n"
        "| wanda | 30.0 | n/a | n/a | n/a | n/a | 30.0 |\n"
        "| guardless | 20.0 | n/a | n/a | n/a | n/a | n/a |\n\n"
        "Hazard categories of the unsafe responses: dense: S9 x2; wanda: S1 x1, S9 x5.\n\n"
        "RSR: n/a"
    )
