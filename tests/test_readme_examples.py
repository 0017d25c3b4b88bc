"""The README's code runs as written: its Python example and its `hsr` commands, on the organism.

The examples name a 7B VLM, its recipe and a user's calibration file; here only those names are
swapped: for organism-vl (a LLaVA, with the bundled LLaVA recipe) and for organism-text (a Llama,
with the wanda_hsr recipe and its causal-LM auto class), with the organism's own calibration
sets. Everything else, imports, calls and flags included, is the README's text."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
ORGANISMS = REPO / "integration" / "organisms"
DATA = ORGANISMS / "data" / "text"


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


def _vl_calibration(tmp_path: Path) -> tuple[Path, Path]:
    """organism-vl's calibration sets, copied alone (their rows embed their pictures)."""
    data = tmp_path / "vl-data"
    data.mkdir()
    for name in ("calib_safety.jsonl", "calib_utility.jsonl"):
        shutil.copy(ORGANISMS / "data" / "vl" / name, data / name)
    return data / "calib_safety.jsonl", data / "calib_utility.jsonl"


def _organism(tmp_path: Path, which: str) -> dict[str, Path | str]:
    if which == "text":
        return {
            "model": ORGANISMS / "organism-text",
            "recipe": "wanda_hsr",
            "auto_class": "AutoModelForCausalLM",
            "safety": DATA / "calib_safety.jsonl",
            "utility": DATA / "calib_utility.jsonl",
        }
    safety, utility = _vl_calibration(tmp_path)
    return {
        "model": ORGANISMS / "organism-vl",
        "recipe": "llava_wanda_hsr",
        "auto_class": "AutoModelForImageTextToText",
        "safety": safety,
        "utility": utility,
    }


def _recipe_with_data(tmp_path: Path, name: str, safety: Path, utility: Path) -> Path:
    """A bundled recipe with HSR pointed at the organism's calibration sets."""
    import yaml

    from hsr_plugin.recipe_overrides import apply_overrides, load_recipe_dict, resolve_recipe

    recipe = apply_overrides(
        load_recipe_dict(resolve_recipe(name)),
        [
            f"HSRModifier.safety_data={safety}",
            f"HSRModifier.utility_data={utility}",
            "HSRModifier.num_heads=4",
        ],
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _organism_command(recipe: Path) -> str:
    (line,) = [
        line
        for line in recipe.read_text().splitlines()
        if line.startswith("#   hsr compress --model integration/organisms/")
    ]
    return line.removeprefix("#   ")


@pytest.mark.subprocess
@pytest.mark.parametrize("which", ["vl", "text"])
def test_python_example_runs(tmp_path, which):
    (block,) = [b for b in _blocks("python") if "import hsr_plugin" in b and "oneshot(" in b]
    organism = _organism(tmp_path, which)
    recipe = _recipe_with_data(
        tmp_path, organism["recipe"], organism["safety"], organism["utility"]
    )
    out = tmp_path / "python-example"
    code = _swap(
        block,
        {
            "AutoModelForImageTextToText": organism["auto_class"],
            '"llava-hf/llava-v1.6-vicuna-7b-hf"': repr(str(organism["model"])),
            '"llava_wanda_hsr"': repr(str(recipe)),
            '"my_calibration.jsonl"': repr(str(organism["utility"])),
            '"llava-next-vicuna-wanda50-hsr"': repr(str(out)),
        },
    )
    _run([sys.executable, "-c", code], tmp_path)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "HSRModifier" in (out / "recipe.yaml").read_text()
    saved = json.loads((out / "config.json").read_text())["architectures"]
    assert saved == json.loads((organism["model"] / "config.json").read_text())["architectures"]


@pytest.mark.subprocess
@pytest.mark.parametrize("which", ["vl", "text"])
def test_hsr_commands_run(tmp_path, which):
    (block,) = [b for b in _blocks("bash") if "hsr compress" in b and "hsr report" in b]
    organism = _organism(tmp_path, which)
    out = tmp_path / "cli-example"
    data = (
        f"HSRModifier.safety_data={organism['safety']} "
        f"--set HSRModifier.utility_data={organism['utility']}"
    )
    script = _swap(
        block,
        {
            "Qwen/Qwen2.5-VL-7B-Instruct": str(organism["model"]),
            "--recipe qwen2vl_wanda_hsr": f"--recipe {organism['recipe']}",
            "qwen25vl-wanda50-hsr": str(out),
            "my_calibration.jsonl": str(organism["utility"]),
            "Qwen2_5_VLDecoderLayer": "LlamaDecoderLayer",
            "HSRModifier.safety_data=/data/VLGuard/train.json:unsafes": data,
        },
    )
    _run(["bash", "-euo", "pipefail", "-c", script], tmp_path)
    report = json.loads((out / "hsr_report.json").read_text())
    assert report["config"]["num_heads"] == 4 and len(report["selected_heads"]) == 4
    assert report["config"]["safety_data"] == str(organism["safety"])
    assert (
        report["model"]["class"]
        == json.loads((organism["model"] / "config.json").read_text())["architectures"][0]
    )
    assert report["totals"]["restored"] > 0
    assert (out / "summary.md").is_file() and (out / "head_scores.png").is_file()


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_the_front_door_commands_are_make_targets(command):
    target = command.split()[1]
    assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(), re.M)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bundled_recipe_runs_on_its_organism_as_its_comment_says(
    recipe, tmp_path, monkeypatch
):
    """The header line `hsr compress --model integration/organisms/...` of each recipe, as
    written, with only the output folder moved to the test's own."""
    import shlex

    from hsr_plugin.cli import main

    argv = shlex.split(_organism_command(recipe))[1:]
    out = tmp_path / "out"
    argv[argv.index("--output") + 1] = str(out)
    monkeypatch.chdir(REPO)
    assert main(argv) == 0
    assert (out / "config.json").is_file()
    if "HSRModifier" in recipe.read_text():
        report = json.loads((out / "hsr_report.json").read_text())
        if "preserve_nm: '2:4'" in recipe.read_text():
            # every 2:4 group of the organism is full after SparseGPT 2:4, as the comment says
            assert report["totals"]["restored"] == 0, recipe.name
        else:
            assert report["totals"]["restored"] > 0, recipe.name
