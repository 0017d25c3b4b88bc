"""The README's code runs as written: its Python example and its `hsr` commands, on the organism.

The examples name a 7B VLM, its recipe and a user's calibration file; here only those names are
swapped for the committed organism (a Llama), the bundled wanda_hsr recipe and the organism's own
calibration sets. Everything else, imports, calls and flags included, is the README's text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
ORGANISM = REPO / "integration" / "organisms" / "organism-text"
DATA = REPO / "integration" / "organisms" / "data" / "text"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _swap(text: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        assert old in text, f"the README example no longer contains {old!r}: update this test"
        text = text.replace(old, new)
    return text


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd[:2]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.subprocess
def test_python_example_runs(tmp_path):
    (block,) = [b for b in _blocks("python") if "import hsr_plugin" in b and "oneshot(" in b]
    out = tmp_path / "python-example"
    code = _swap(
        block,
        {
            '"llava-hf/llava-v1.6-vicuna-7b-hf"': repr(str(ORGANISM)),
            '"llava_wanda_hsr"': '"wanda_hsr"',
            '"my_calibration.jsonl"': repr(str(DATA / "calib_utility.jsonl")),
            '"llava-next-vicuna-wanda50-hsr"': repr(str(out)),
        },
    )
    _run([sys.executable, "-c", code], tmp_path)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "HSRModifier" in (out / "recipe.yaml").read_text()


@pytest.mark.subprocess
def test_hsr_commands_run(tmp_path):
    (block,) = [b for b in _blocks("bash") if "hsr compress" in b and "hsr report" in b]
    out = tmp_path / "cli-example"
    script = _swap(
        block,
        {
            "Qwen/Qwen2.5-VL-7B-Instruct": str(ORGANISM),
            "--recipe qwen2vl_wanda_hsr": "--recipe wanda_hsr",
            "qwen25vl-wanda50-hsr": str(out),
            "my_calibration.jsonl": str(DATA / "calib_utility.jsonl"),
            "Qwen2_5_VLDecoderLayer": "LlamaDecoderLayer",
            "/data/VLGuard/train.json:unsafes": str(DATA / "calib_safety.jsonl"),
        },
    )
    _run(["bash", "-euo", "pipefail", "-c", script], tmp_path)
    report = json.loads((out / "hsr_report.json").read_text())
    assert report["config"]["num_heads"] == 4 and len(report["selected_heads"]) == 4
    assert report["config"]["safety_data"] == str(DATA / "calib_safety.jsonl")
    assert report["totals"]["restored"] > 0
    assert (out / "summary.md").is_file() and (out / "head_scores.png").is_file()


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_the_front_door_commands_are_make_targets(command):
    target = command.split()[1]
    assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(), re.M)
