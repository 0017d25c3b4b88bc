"""hsr_plugin.plots: the summary markdown and the figures the user reads, pinned whole (labels,
bars, frames and titles)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from hsr_eval.tables import comparison_table
from hsr_plugin.plots import (
    head_score_grid,
    head_scores_figure,
    safety_bars_figure,
    summary_markdown,
)
from tests.helpers import (
    COMPARISON_TEXT,
    rich_comparison,
    sample_comparison,
    sample_report,
)

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


def test_figure_details_a_user_sees(tmp_path):
    from hsr_plugin.plots import head_scores_figure, safety_bars_figure

    report = sample_report()
    del report["config"]
    fig = head_scores_figure(report)
    ax, bar = fig.axes
    assert ax.get_aspect() == "auto" and bar.get_ylabel() == "head score (score)"
    for ax in safety_bars_figure(sample_comparison()).axes:
        for rect, label in zip(ax.patches, ax.texts, strict=True):
            assert label.xy == (rect.get_x() + rect.get_width() / 2, rect.get_height())


def test_figures_are_saved_at_120_dpi(tmp_path):

    from hsr_plugin.plots import plot_head_scores

    with Image.open(plot_head_scores(sample_report(), tmp_path / "h.png")) as image:
        assert image.size == (480, 360)  # 4 x 3 inches


def test_grid_places_every_score():
    grid = head_score_grid(sample_report())
    assert grid.shape == (3, 4)
    assert grid[2, 3] == 11.0 and grid[0, 0] == 0.0
    assert not np.isnan(grid).any()


def test_summary_has_counts_and_table():
    text = summary_markdown(sample_report(), sample_comparison())
    assert "restored weights: 7 of 5,000 pruned" in text
    assert "(2, 3), (2, 2)" in text
    assert "| wanda+hsr | 20.0 | 80.0 | 4.0 | 85.0 | 50.0 |" in text
    assert "RSR wanda+hsr: 52.6%" in comparison_table(sample_comparison())


def test_empty_report_is_an_error():
    with pytest.raises(ValueError, match="no scored heads"):
        head_score_grid({"heads": []})


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
