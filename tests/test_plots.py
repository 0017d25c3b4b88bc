import json

import numpy as np
import pytest
from PIL import Image

from hsr_plugin.cli import main
from hsr_plugin.plots import comparison_table, head_score_grid, summary_markdown


def _report():
    heads = [
        {"layer": layer, "head": h, "kv_group": h // 2, "score": float(layer * 4 + h)}
        for layer in range(3)
        for h in range(4)
    ]
    heads.sort(key=lambda r: -r["score"])
    return {
        "schema_version": 1,
        "config": {
            "head_score": "ships_subspace",
            "neuron_score": "wanda",
            "head_slicing": "exact",
        },
        "heads": heads,
        "selected_heads": [[2, 3], [2, 2]],
        "restored": [
            {
                "module": "model.layers.2.self_attn.q_proj",
                "restored": 7,
                "pruned_in_slice": 50,
                "candidates": 20,
            }
        ],
        "totals": {
            "restored": 7,
            "language_params": 10000,
            "pruned_params": 5000,
            "restored_per_10k_params": 7.0,
            "restored_per_10k_pruned": 14.0,
        },
        "timing_s": {"head_scoring": 1.5, "restore": 0.1},
    }


def _comparison():
    return {
        "models": {
            "dense": {
                "asr": 0.02,
                "refusal_rate": 0.98,
                "over_refusal_rate": 0.05,
                "utility": 0.9,
                "sparsity": 0.0,
            },
            "wanda": {
                "asr": 0.40,
                "refusal_rate": 0.60,
                "over_refusal_rate": 0.03,
                "utility": 0.85,
                "sparsity": 0.5,
            },
            "wanda+hsr": {
                "asr": 0.20,
                "refusal_rate": 0.80,
                "over_refusal_rate": 0.04,
                "utility": 0.85,
                "sparsity": 0.4999,
            },
        },
        "rsr": {"wanda+hsr": 0.5263},
    }


def test_grid_places_every_score():
    grid = head_score_grid(_report())
    assert grid.shape == (3, 4)
    assert grid[2, 3] == 11.0 and grid[0, 0] == 0.0
    assert not np.isnan(grid).any()


def test_summary_has_counts_and_table():
    text = summary_markdown(_report(), _comparison())
    assert "restored weights: 7 of 5,000 pruned" in text
    assert "(2, 3), (2, 2)" in text
    assert "| wanda+hsr | 20.0 | 80.0 | 4.0 | 85.0 | 50.0 |" in text
    assert "RSR wanda+hsr: 52.6%" in comparison_table(_comparison())


def test_report_command_writes_pngs(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(_report()))
    (tmp_path / "c.json").write_text(json.dumps(_comparison()))
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
    from hsr_plugin.tables import markdown_table

    text = markdown_table(["a", "b"], [["KL(q||p)", 1]])
    assert text.splitlines()[2] == "| KL(q\\|\\|p) | 1 |"
    with pytest.raises(ValueError, match="table row has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
