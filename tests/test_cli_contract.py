"""The `hsr` command line as users meet it: every option, default and help line (a golden file),
one-line errors, bad reports, the demo hand-off, and the up-front checks of calibration specs.

Regenerate the golden help after a deliberate change to the CLI with
`HSR_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_cli_contract.py`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsr_plugin import cli
from hsr_plugin.cli import demo as cli_demo
from hsr_plugin.cli.errors import one_line
from hsr_plugin.cli.inputs import check_hsr_entries, dataset_kwargs
from hsr_plugin.cli.report import report as report_command
from tests.helpers import sample_comparison, sample_report

GOLDEN = Path(__file__).with_name("golden") / "hsr_help.txt"
COMMANDS = ([], ["compress"], ["report"], ["sweep"], ["demo"])


def _help_text(monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal width
    parts = []
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.main([*command, "--help"])
        assert done.value.code == 0
        parts.append(f"$ hsr {' '.join([*command, '--help'])}\n{capsys.readouterr().out}")
    return "\n".join(parts)


def test_every_option_and_help_line_matches_the_golden_file(monkeypatch, capsys):
    text = _help_text(monkeypatch, capsys)
    if os.environ.get("HSR_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), f"`hsr ... --help` changed: compare with {GOLDEN}"


def test_parsed_defaults_and_required_options(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(
        ["compress", "--model", "m", "--recipe", "r", "--output", "o", "--dataset", "d"]
    )
    assert (args.max_seq_length, args.num_samples, args.seed) == (512, 128, 0)
    assert args.pipeline == "independent"
    assert args.overrides == [] and not args.overwrite
    typed = parser.parse_args(["compress", "--model", "m", "--recipe", "r", "--output", "o",
                               "--dataset", "d", "--seed", "3", "--num-samples", "4",
                               "--max-seq-length", "64"])  # fmt: skip
    assert (typed.seed, typed.num_samples, typed.max_seq_length) == (3, 4, 64)
    sweep = parser.parse_args(["sweep", "--model", "m", "--recipe", "r", "--output", "o",
                               "--dataset", "d", "--grid", "num_heads=1", "--eval-data", "e",
                               "--seed", "5"])  # fmt: skip
    assert (sweep.seed, sweep.num_samples, sweep.max_seq_length, sweep.eval_limit) == (
        5, 128, 512, None
    )  # fmt: skip
    plain = ["sweep", "--model", "m", "--recipe", "r", "--output", "o", "--dataset", "d",
             "--grid", "num_heads=1", "--eval-data", "e"]  # fmt: skip
    sweep = parser.parse_args(plain)
    assert sweep.seed == 0 and sweep.overrides == [] and not sweep.overwrite
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--model", "m", "--recipe", "r", "--grid", "a.b=1"])
    assert "the following arguments are required: --output" in capsys.readouterr().err


def test_validation_errors_are_one_line_naming_each_field():
    from hsr_plugin import HSRModifier

    with pytest.raises(Exception) as fields:
        HSRModifier(num_heads=0, neuron_scor="x")
    assert one_line(fields.value) == (
        "HSRModifier: num_heads: Input should be greater than or equal to 1; "
        "neuron_scor: Extra inputs are not permitted"
    )
    with pytest.raises(Exception) as whole:
        HSRModifier(rounds=2)  # a model-level check has no field: its type names it
    assert one_line(whole.value).startswith("HSRModifier: value_error: Value error, rounds=2")
    assert one_line(ValueError("a\nb\nc\nd")) == "a | b | c"
    assert one_line(ValueError("  only  ")) == "only"
    assert one_line(ValueError("")) == "ValueError"


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


def test_debug_keeps_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(SystemExit, match="does not exist"):
        cli.run(["--debug", "report", missing])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.run(["report", missing, "--debug"])  # accepted anywhere on the line


def test_report_creates_nested_output_folders(tmp_path):
    report = _write(tmp_path / "r.json", sample_report())
    out = tmp_path / "a" / "b"
    assert cli.run(["report", str(report), "--out", str(out)]) == 0
    assert (out / "summary.md").is_file() and (out / "head_scores.png").is_file()


def test_run_reads_sys_argv_when_given_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hsr", "report", str(tmp_path / "missing.json")])
    assert cli.run() == 2
    assert capsys.readouterr().err == f"error: report {tmp_path / 'missing.json'} does not exist\n"


def test_report_puts_the_comparison_in_the_summary(tmp_path):
    report = _write(tmp_path / "r.json", sample_report())
    comparison = _write(tmp_path / "c.json", sample_comparison())
    out = report_command(
        cli.build_parser().parse_args(["report", str(report), "--comparison", str(comparison)])
    )
    summary = (out / "summary.md").read_text()
    assert out == tmp_path and "| wanda+hsr | 20.0 | 80.0 | 4.0 | 85.0 | 50.0 |" in summary
    assert "RSR wanda+hsr: 52.6%" in summary


def test_demo_hands_over_to_the_checkout_module(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, cmd: calls.append((exe, cmd, Path.cwd())))
    checkout = Path(cli.__file__).resolve().parents[2]
    monkeypatch.chdir(checkout / "integration")  # found from the working directory's parents
    cli.main(["demo", "--out", "outputs/d", "--extra"])
    ((exe, cmd, cwd),) = calls
    assert exe == sys.executable and cmd == [
        sys.executable,
        "-m",
        "integration.demo.run_demo",
        "--out",
        str(checkout / "integration" / "outputs" / "d"),
        "--extra",
    ]
    assert cwd == checkout and (checkout / "integration" / "demo" / "run_demo.py").is_file()


def test_calibration_specs_with_a_split_are_checked_before_any_work(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    recipe = {
        "hsr_stage": {
            "hsr_modifiers": {
                "HSRModifier": {"safety_data": f"{tmp_path / 'train.json'}:bogus", "num_heads": 2}
            }
        }
    }
    with pytest.raises(ValueError, match="VLGuard split must be one of"):
        check_hsr_entries(recipe)


def test_demo_outside_a_checkout_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr(
        cli_demo, "__file__", str(tmp_path / "site-packages" / "hsr_plugin" / "cli" / "demo.py")
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        cli.main(["demo"])
    assert err.value.code == (
        "error: `hsr demo` runs from a checkout of the hsr-plugin repository "
        "(integration/demo/run_demo.py was not found); clone it and run `make demo`"
    )


def test_the_pruning_calibration_rows_follow_the_seed(model_dirs, calib_files):
    def rows(seed):
        args = cli.build_parser().parse_args(
            ["compress", "--model", str(model_dirs["llama"]), "--recipe", "r", "--output", "o",
             "--dataset", str(calib_files["utility"]), "--num-samples", "2", "--seed", str(seed)]
        )  # fmt: skip
        return [row["input_ids"] for row in dataset_kwargs(args)["dataset"]]

    assert rows(0) == rows(0) and len(rows(0)) == 2
    args = cli.build_parser().parse_args(
        ["compress", "--model", str(model_dirs["llama"]), "--recipe", "r", "--output", "o",
         "--dataset", str(calib_files["utility"])]
    )  # fmt: skip
    kwargs = dataset_kwargs(args)
    assert sorted(kwargs) == ["batch_size", "data_collator", "dataset", "num_calibration_samples"]
    (first, *_) = kwargs["dataset"]
    assert sorted(first) == ["attention_mask", "input_ids"]
    assert first["attention_mask"] == [[1] * len(first["input_ids"][0])]
    assert kwargs["batch_size"] == 1 and kwargs["num_calibration_samples"] == 6
    assert any(rows(0) != rows(seed) for seed in (1, 2, 3))
    assert dataset_kwargs(SimpleNamespace(dataset="open_platypus")) == {"dataset": "open_platypus"}
