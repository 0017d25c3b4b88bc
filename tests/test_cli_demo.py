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


@pytest.mark.subprocess
def test_a_stopped_demo_stops_its_running_step_and_leaves_no_staging(tmp_path):
    """SIGTERM to the demo while `hsr compress` runs its first step: the step gets SIGTERM in
    turn (not subprocess.run's SIGKILL), so it removes its staging folder before the demo exits;
    no step outlives the demo."""
    import signal
    import subprocess
    import time

    from tests.helpers import serve_bin

    checkout = Path(__file__).resolve().parents[1]
    serve_venv = serve_bin("hsr-compare").parents[1]  # the demo checks for it before starting
    out = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "integration.demo.run_demo", "--out", str(out)],
        cwd=checkout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, HSR_SERVE_VENV=str(serve_venv)),
    )
    deadline = time.monotonic() + 180
    while not list(out.glob(".wanda.pid*")) and time.monotonic() < deadline:
        assert demo.poll() is None, demo.communicate()[1][-2000:]
        time.sleep(0.05)
    assert list(out.glob(".wanda.pid*")), "the first step never started writing"
    step = int(next(out.glob(".wanda.pid*")).name.split(".pid", 1)[1].split(".", 1)[0])
    demo.send_signal(signal.SIGTERM)
    _, stderr = demo.communicate(timeout=120)
    assert demo.returncode != 0
    assert "the demo was stopped by signal 15" in stderr
    assert not list(out.glob(".*pid*")) and not (out / "wanda").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(step, 0)


def test_the_real_model_demo_calibrates_as_a_new_user_would(tmp_path):
    """`--organism qwen`: the pruning stage on HSR's bundled utility set (64 samples), HSR on its
    bundled sets with screened heads (`head_rerun: screened`); float32 on a CPU. The organisms
    keep their own sets."""
    from integration.demo import run_demo

    data = tmp_path / "text"
    real = run_demo.calibration_args("qwen", data, "recipes/wanda_hsr_recommended.yaml")
    assert real[:4] == ["--dataset", run_demo.BUNDLED_UTILITY, "--num-samples", "64"]
    assert run_demo.BUNDLED_UTILITY.is_file()
    assert real[-2:] == ["--set", "HSRModifier.head_rerun=screened"]
    assert ("--dtype" in real) == (not __import__("torch").cuda.is_available())
    assert not any("safety_data" in str(a) for a in real)
    pruning = run_demo.calibration_args("qwen", data, "recipes/wanda.yaml")
    assert "HSRModifier.head_rerun=screened" not in pruning
    organism = run_demo.calibration_args("text", data, "recipes/wanda_hsr.yaml")
    assert organism == [
        "--dataset",
        data / "calib_utility.jsonl",
        "--set",
        f"HSRModifier.safety_data={data / 'calib_safety.jsonl'}",
        "--set",
        f"HSRModifier.utility_data={data / 'calib_utility.jsonl'}",
    ]


def test_the_real_model_demo_without_its_packages_stops_in_one_line(monkeypatch):
    from integration.demo import run_demo
    from integration.organisms import qwen

    def missing(*_args, **_kwargs):
        raise qwen.MissingPartsError("6 of 6 weight packages are missing (...): pip install ...")

    monkeypatch.setattr(qwen, "materialize", missing)
    with pytest.raises(SystemExit) as err:
        run_demo.main(["--organism", "qwen", "--out", "unused"])
    assert err.value.code == ("error: 6 of 6 weight packages are missing (...): pip install ...")
