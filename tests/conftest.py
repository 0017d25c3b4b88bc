"""Shared fixtures: tiny models saved to session directories, and calibration JSONL files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

from integration.bench import tiny_models  # noqa: E402  (after the offline switches above)

REPO = Path(__file__).resolve().parents[1]


def hsr_eval_sources() -> dict[str, Path]:
    """Where each installed part of hsr_eval comes from: integration/pyproject.toml's
    package-dir, as `{"": serving/, "tasks": lm_eval_tasks/hsr_safety/, ...}`."""
    import tomllib

    project = REPO / "integration" / "pyproject.toml"
    mapping = tomllib.loads(project.read_text())["tool"]["setuptools"]["package-dir"]
    return {
        package.removeprefix("hsr_eval").lstrip("."): project.parent / folder
        for package, folder in mapping.items()
    }


def stale_hsr_eval_files() -> list[str]:
    """Files of the installed hsr_eval that differ from the checkout's sources."""
    import importlib.util

    spec = importlib.util.find_spec("hsr_eval")
    if spec is None or not spec.origin:
        return ["hsr_eval is not installed"]
    installed = Path(spec.origin).parent
    stale = []
    for part, source in hsr_eval_sources().items():
        target = installed / part
        for path in sorted(target.rglob("*") if part else target.glob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                origin = source / path.relative_to(target)
                if not origin.is_file() or origin.read_bytes() != path.read_bytes():
                    stale.append(str(path.relative_to(installed)))
        patterns = ("*.py", "*.yaml") if part != "data" else ()
        for pattern in patterns:
            for origin in source.glob(pattern):
                if not (target / origin.name).is_file():
                    stale.append(f"{part}/{origin.name} (not installed)")
    return stale


def pytest_sessionstart(session) -> None:
    """hsr_eval is imported as installed (the wheel built from integration/), so a stale install
    would test old code: refuse to start then. (tests.mutation.listed sets
    HSR_TEST_INSTALLED_ONLY for the mutated copies it installs itself.)"""
    if os.environ.get("HSR_TEST_INSTALLED_ONLY"):
        return
    stale = stale_hsr_eval_files()
    if stale:
        pytest.exit(
            f"the installed hsr_eval differs from the checkout ({', '.join(stale[:5])}): run "
            "`make compress-venv` (make test does it first)",
            returncode=4,
        )


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": tiny_models.build_llama(root / "llama"),
        "qwen2": tiny_models.build_qwen2(root / "qwen2"),
        "llava": tiny_models.build_llava(root / "llava"),
        "qwen2_vl": tiny_models.build_qwen2_vl(root / "qwen2_vl"),
        "qwen2_vl_processor": tiny_models.add_qwen2_vl_processor(
            tiny_models.build_qwen2_vl(root / "qwen2_vl_processor")
        ),
    }


@pytest.fixture(scope="session")
def calib_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calib")
    image = tiny_models.write_image(root / "unsafe.png")
    tiny_models.write_image(root / "safe.png", color=(30, 160, 60))
    return {
        "safety": tiny_models.write_jsonl(root / "safety.jsonl", tiny_models.SAFETY_ROWS),
        "utility": tiny_models.write_jsonl(root / "utility.jsonl", tiny_models.UTILITY_ROWS),
        "safety_vl": tiny_models.write_jsonl(
            root / "safety_vl.jsonl", tiny_models.SAFETY_ROWS, image=image.name
        ),
        "utility_vl": tiny_models.write_jsonl(
            root / "utility_vl.jsonl", tiny_models.UTILITY_ROWS, image="safe.png"
        ),
    }


@pytest.fixture
def work(model_dirs, calib_files, tmp_path, monkeypatch):
    """A private copy of the tiny Llama and the calibration files, and the cwd beside them."""
    from hsr_eval.common import folder_digest

    root = tmp_path / "work"
    model = root / "model"
    shutil.copytree(model_dirs["llama"], model)
    (root / "notes.txt").write_text("the user's own file\n")
    data = {name: Path(shutil.copy(calib_files[name], root)) for name in ("safety", "utility")}
    recipe = Path(shutil.copy(REPO / "recipes" / "wanda_hsr.yaml", root))
    monkeypatch.chdir(root)
    return {
        "root": root,
        "model": model,
        "data": data,
        "recipe": recipe,
        "digest": folder_digest(model),
    }
