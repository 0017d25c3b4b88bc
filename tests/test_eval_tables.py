"""hsr_eval.tables: every comparison table the user reads, pinned whole (exact Markdown text), so a
changed word, digit or column shows as a diff."""

from __future__ import annotations

import pytest

from hsr_eval.tables import comparison_table, fmt, markdown_table, percent, rsr_lines
from tests.helpers import (
    COMPARISON_TEXT,
    rich_comparison,
)


def test_the_judge_line_needs_only_the_judge():
    from hsr_eval.tables import comparison_table

    text = comparison_table({"models": {"m": {"asr": 0.5, "judge": "refusal-prefix"}}})
    assert text.endswith("RSR: n/a\n\nJudge: refusal-prefix; backend: None.")


def test_table_cells_may_hold_pipes():
    from hsr_eval.tables import markdown_table

    text = markdown_table(["a", "b"], [["KL(q||p)", 1]])
    assert text.splitlines()[2] == "| KL(q\\|\\|p) | 1 |"
    with pytest.raises(ValueError, match="table row has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])


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
