"""`hsr demo` (hsr_plugin.cli.demo): the hand-off to the checkout's demo module, and the advice
outside a checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hsr_plugin import cli
from hsr_plugin.cli import demo as cli_demo


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
