"""`hsr report` (hsr_plugin.cli.report): the summary and plots of a report, and one-line errors for
bad reports and comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hsr_plugin import cli
from hsr_plugin.cli import main
from hsr_plugin.cli.report import report as report_command
from tests.helpers import (
    one_error_line,
    sample_comparison,
    sample_report,
)


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"totals": []}, "'totals' must be a JSON object"),
        ({"config": None}, "'config' must be a JSON object"),
        ({"restored": {}}, "'restored' and 'selected_heads' must be lists"),
        ({"selected_heads": None}, "'restored' and 'selected_heads' must be lists"),
        ({"heads": [{"layer": 0, "head": "a", "score": 1.0}]}, "'heads' must list"),
        ({"schema_version": 2}, "schema_version 2 is not supported"),
    ],
)
def test_a_malformed_report_is_one_error_line(tmp_path, capsys, change, message):
    path = _write(tmp_path / "r.json", {**sample_report(), **change})
    assert cli.run(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: {message}" + err.split(message, 1)[1] and err.count("\n") == 1


def test_report_creates_nested_output_folders(tmp_path):
    report = _write(tmp_path / "r.json", sample_report())
    out = tmp_path / "a" / "b"
    assert cli.run(["report", str(report), "--out", str(out)]) == 0
    assert (out / "summary.md").is_file() and (out / "head_scores.png").is_file()


def test_report_puts_the_comparison_in_the_summary(tmp_path):
    report = _write(tmp_path / "r.json", sample_report())
    comparison = _write(tmp_path / "c.json", sample_comparison())
    out = report_command(
        cli.build_parser().parse_args(["report", str(report), "--comparison", str(comparison)])
    )
    summary = (out / "summary.md").read_text()
    assert out == tmp_path and "| wanda+hsr | 20.0 | 80.0 | 4.0 | 85.0 | 50.0 |" in summary
    assert "RSR wanda+hsr: 52.6%" in summary


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema_version": 1, "heads": [', "not a valid JSON report"),
        ("[1, 2]", "a report is a JSON object, found list"),
        ('{"schema_version": 2}', "schema_version 2 is not supported"),
        ('{"schema_version": 99}', "schema_version 99 is not supported"),
        ('{"schema_version": 1, "heads": [{"layer": "x"}]}', "'heads' must list"),
    ],
    ids=["truncated", "list", "v2", "v99", "wrong-types"],
)
def test_hsr_report_refuses_bad_reports_in_one_line(tmp_path, capsys, text, message):
    from hsr_plugin.cli import run

    path = tmp_path / "hsr_report.json"
    path.write_text(text)
    assert run(["report", str(path), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and message in line, line
    assert not (tmp_path / "o").exists()


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


@pytest.mark.parametrize("command", ["report", "sweep"])
def test_without_the_plots_extra_a_figure_command_stops_at_once_naming_it(
    tmp_path, capsys, monkeypatch, command
):
    """matplotlib is the `plots` extra: a command that draws says so in one line, before any
    work (a sweep would otherwise fail after pruning and scoring every grid point)."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without it looks like
    report = _write(tmp_path / "r.json", sample_report())
    args = {
        "report": ["report", str(report)],
        "sweep": ["sweep", "--model", str(tmp_path), "--recipe", "wanda_hsr", "--dataset", "x",
                  "--output", str(tmp_path / "o"), "--grid", "num_heads=1", "--eval-data", "e"],
    }[command]  # fmt: skip
    assert cli.run(args) == 2
    line = one_error_line(capsys)
    assert line == (
        f"error: hsr {command} draws its figures with matplotlib, which is not installed: "
        "pip install 'hsr-plugin[plots]'"
    )
    assert not (tmp_path / "head_scores.png").exists() and not (tmp_path / "o").exists()
