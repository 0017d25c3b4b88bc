"""The `hsr` command line as users meet it: every option, default and help line (a golden file),
the entry point's exit codes, one-line user errors and bugs that keep their traceback.

Regenerate the golden help after a deliberate change to the CLI with `HSR_REGENERATE_GOLDEN=1
.venv/bin/python -m pytest tests/test_cli.py`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hsr_plugin import cli
from hsr_plugin.cli.errors import one_line
from tests.helpers import (
    assert_inputs_untouched,
    work_args,
)

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


def _failing_linear_forward(error: BaseException):
    """Patch every Linear's forward to raise `error` once HSR's own scoring starts."""
    original = torch.nn.Linear.forward

    def forward(self, x):
        import traceback

        if any("hsr_plugin" in frame.filename for frame in traceback.extract_stack()):
            raise error
        return original(self, x)

    return forward


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


def test_debug_keeps_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(SystemExit, match="does not exist"):
        cli.run(["--debug", "report", missing])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.run(["report", missing, "--debug"])  # accepted anywhere on the line


def test_run_reads_sys_argv_when_given_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hsr", "report", str(tmp_path / "missing.json")])
    assert cli.run() == 2
    assert capsys.readouterr().err == f"error: report {tmp_path / 'missing.json'} does not exist\n"


@pytest.mark.subprocess
def test_the_real_entry_point_prints_one_line(work):
    hsr = Path(sys.executable).with_name("hsr")
    proc = subprocess.run(
        [str(hsr), *work_args(work, work["model"], "--overwrite")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --output")
    assert "Traceback" not in proc.stderr
    assert_inputs_untouched(work)


@pytest.mark.subprocess
def test_help_runs_from_the_console_script():
    """`hsr` imports hsr_plugin, which registers HSRModifier and so imports llm-compressor (its
    device warnings go to stdout before the usage on a machine without an accelerator)."""
    hsr = Path(sys.executable).with_name("hsr")
    for args in (["--help"], ["compress", "--help"], ["report", "--help"]):
        proc = subprocess.run([str(hsr), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: hsr{' ' + args[0] if len(args) > 1 else ''}" in proc.stdout


@pytest.mark.parametrize(
    ("error", "code", "expect"),
    [
        (RuntimeError("shape mismatch deep inside torch"), 1, "this is a bug"),
        (ValueError("an internal ValueError of a library"), 1, "this is a bug"),
        (torch.OutOfMemoryError("CUDA out of memory"), 3, "out of memory: lower"),
    ],
    ids=["runtime-error", "value-error", "out-of-memory"],
)
def test_an_internal_error_keeps_its_traceback_and_is_called_a_bug(
    work, tmp_path, capsys, monkeypatch, error, code, expect
):
    from hsr_plugin.cli import run

    monkeypatch.setattr(torch.nn.Linear, "forward", _failing_linear_forward(error))
    assert run(work_args(work, tmp_path / "out")) == code
    err = capsys.readouterr().err
    assert expect in err.strip().splitlines()[-1]
    if code == 1:
        assert "Traceback (most recent call last)" in err and str(error) in err
        assert "test_cli.py" in err  # the traceback runs down to the failing forward
    else:  # out of memory: one line of advice, no traceback through the failing forward
        assert "_failing_linear_forward" not in err and "test_cli.py" not in err
    assert not (tmp_path / "out").exists()
    assert_inputs_untouched(work)


def test_main_reads_sys_argv_and_refuses_unknown_arguments(tmp_path, monkeypatch, capsys):
    import sys

    from hsr_plugin import cli

    missing = tmp_path / "missing.json"
    monkeypatch.setattr(sys, "argv", ["hsr", "report", str(missing)])
    with pytest.raises(SystemExit) as err:
        cli.main()
    assert err.value.code == f"error: report {missing} does not exist"
    with pytest.raises(SystemExit):
        cli.main(["report", str(missing), "--bogus", "x"])
    assert capsys.readouterr().err.endswith("hsr: error: unrecognized arguments: --bogus x\n")
