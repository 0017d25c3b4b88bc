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
    from hsr_eval.files import folder_digest

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
