import json

import numpy as np
import pytest
from PIL import Image

from hsr_eval.tables import comparison_table
from hsr_plugin.cli import main
from hsr_plugin.plots import head_score_grid, summary_markdown
from tests.helpers import sample_comparison, sample_report


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


def test_report_command_writes_pngs(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(sample_report()))
    (tmp_path / "c.json").write_text(json.dumps(sample_comparison()))
    assert (
        main(
            [
                "report",
                str(tmp_path / "r.json"),
                "--comparison",
                str(tmp_path / "c.json"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    for name in ("head_scores.png", "safety_bars.png"):
        with Image.open(tmp_path / "o" / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert "HSR summary" in (tmp_path / "o" / "summary.md").read_text()


def test_empty_report_is_an_error():
    with pytest.raises(ValueError, match="no scored heads"):
        head_score_grid({"heads": []})


def test_table_cells_may_hold_pipes():
    from hsr_eval.tables import markdown_table

    text = markdown_table(["a", "b"], [["KL(q||p)", 1]])
    assert text.splitlines()[2] == "| KL(q\\|\\|p) | 1 |"
    with pytest.raises(ValueError, match="table row has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
