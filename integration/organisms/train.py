"""Train the safety model organisms from nothing, on CPU, with fixed seeds.

    python -m integration.organisms.train --organism text      # about 10 minutes on one core

organism-text: a Llama-architecture causal LM with GQA and its own byte-level BPE tokenizer.
Phase A ("pretraining") teaches the tasks and answers harmful requests with a content-free
placeholder. Phase B (safety) trains ONLY the attention projections (q/k/v/o) to refuse harmful
requests while replaying benign and borderline data. Safety therefore lives in attention by
construction, which makes this organism friendly to HSR (see README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from loguru import logger
from tqdm import tqdm

from hsr_eval.files import file_sha256, published_dir
from integration.organisms.registry import write_manifest
from integration.organisms.text_data import SEED, build_splits, data_recipe_hash, training_mixture

HERE = Path(__file__).resolve().parent

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'system' %}<|system|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n"
    "{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]


@dataclass
class PhaseSpec:
    steps: int
    lr: float
    examples: int
    trainable: (
        str  # "all" | "attention" | "attention:<layer>,<layer>" (attention of those layers only)
    )
    seed: int


@dataclass
class OrganismSpec:
    name: str
    vocab_size: int = 768
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 32  # vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16)
    max_position_embeddings: int = 128
    batch_size: int = 32
    phase_a: PhaseSpec = field(default_factory=lambda: PhaseSpec(2000, 3e-3, 60000, "all", SEED))
    phase_b: PhaseSpec = field(
        default_factory=lambda: PhaseSpec(1000, 1.5e-3, 9000, "attention:2,3", SEED + 1)
    )
    seed: int = SEED


SPECS = {"text": OrganismSpec(name="organism-text")}


def tokenizer_corpus() -> list[str]:
    splits = build_splits()
    rows = training_mixture("A", 4000, 7) + training_mixture("B", 2000, 8)
    texts = [m["content"] for r in rows for m in r["messages"]]
    texts += [
        e.prompt
        for e in splits["heldout_harmful"]
        + splits["heldout_borderline"]
        + splits["heldout_utility"]
    ]
    return texts


def build_tokenizer(spec: OrganismSpec):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(spec: OrganismSpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def encode(rows: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) with the loss on the assistant answer (and its eos) only."""
    from hsr_plugin.calibration import encode_conversation

    out = []
    for row in rows:
        ids, n_prompt = encode_conversation(tokenizer, row["messages"], "training row")
        out.append((ids, [-100] * n_prompt + ids[n_prompt:]))
    return out


def batches(encoded, batch_size: int, steps: int, seed: int, pad_id: int):
    rng = random.Random(seed)
    for _ in range(steps):
        chunk = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (x, y) in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        yield ids, mask, labels


def is_trainable(name: str, rule: str) -> bool:
    if rule == "all":
        return True
    kind, _, layers = rule.partition(":")
    if kind != "attention":
        raise ValueError(f"unknown trainable rule {rule!r}")
    in_attention = any(p in name for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    return in_attention and (not layers or any(f"layers.{i}." in name for i in layers.split(",")))


def train_phase(
    model, tokenizer, spec: OrganismSpec, phase: str, phase_spec: PhaseSpec
) -> list[float]:
    rows = training_mixture(phase, phase_spec.examples, phase_spec.seed)
    encoded = encode(rows, tokenizer)
    for name, param in model.named_parameters():
        param.requires_grad = is_trainable(name, phase_spec.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=phase_spec.lr, weight_decay=0.01)
    warmup = max(1, phase_spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, phase_spec.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses = []
    bar = tqdm(
        batches(
            encoded, spec.batch_size, phase_spec.steps, phase_spec.seed, tokenizer.pad_token_id
        ),
        total=phase_spec.steps,
        desc=f"phase {phase}",
        mininterval=5,
    )
    for ids, mask, labels in bar:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad = True
    return losses


def _phase_a(model, tokenizer, spec: OrganismSpec, cache_dir: Path | None) -> list[float]:
    """Phase A, cached under `cache_dir` by the hash of everything it depends on, so that
    iterating on phase B does not repeat the long pretraining (same seeds: same weights).
    No cache_dir: trained from nothing."""
    import hashlib

    key = hashlib.sha256(
        json.dumps(
            [
                asdict(spec.phase_a),
                spec.name,
                spec.hidden_size,
                spec.num_hidden_layers,
                spec.head_dim,
                data_recipe_hash(spec.seed),
                CHAT_TEMPLATE,
            ]
        ).encode()
    ).hexdigest()[:16]
    if cache_dir is None:
        return train_phase(model, tokenizer, spec, "A", spec.phase_a)
    cache = cache_dir / f"{spec.name}-phaseA-{key}.pt"
    if cache.is_file():
        state = torch.load(cache)
        model.load_state_dict(state["model"])
        logger.info(f"phase A: reused {cache}")
        return state["losses"]
    losses = train_phase(model, tokenizer, spec, "A", spec.phase_a)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "losses": losses}, cache)
    return losses


def training_manifest(spec: OrganismSpec) -> dict:
    """What the committed files must match: the spec and the hash of the data recipe."""
    return {"spec": asdict(spec), "data_recipe_sha256": data_recipe_hash(spec.seed)}


def train(organism: str, out_dir: Path, cache_dir: Path | None = None) -> Path:
    """Train `organism` from nothing into `out_dir` (published atomically). One thread and fixed
    seeds: a rebuild on the same software reproduces the committed weights bit for bit (the
    manifest records their digest; the slow test rebuilds and compares)."""
    spec = SPECS[organism]
    torch.set_num_threads(1)
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    start = time.monotonic()
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer)
    logger.info(
        f"{spec.name}: {sum(p.numel() for p in model.parameters()):,} params, vocab "
        f"{len(tokenizer)}"
    )
    loss_a = _phase_a(model, tokenizer, spec, cache_dir)
    loss_b = train_phase(model, tokenizer, spec, "B", spec.phase_b)
    manifest = training_manifest(spec) | {
        "final_loss": {"A": sum(loss_a[-50:]) / 50, "B": sum(loss_b[-50:]) / 50},
        "train_seconds": round(time.monotonic() - start, 1),
        "torch": torch.__version__,
    }
    with published_dir(out_dir) as staging:
        model.to(torch.bfloat16).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        weights = file_sha256(staging / "model.safetensors")
        write_manifest(staging, manifest | {"weights_sha256": weights})
    logger.info(f"{spec.name}: saved to {out_dir} in {manifest['train_seconds']} s")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--organism", choices=sorted(SPECS), default="text")
    parser.add_argument("--out", help="output folder (default integration/organisms/<name>)")
    parser.add_argument(
        "--cache",
        type=Path,
        help="reuse phase A from this folder, or save it there (when tuning phase B)",
    )
    args = parser.parse_args()
    spec = SPECS[args.organism]
    train(args.organism, Path(args.out) if args.out else HERE / spec.name, args.cache)


if __name__ == "__main__":
    main()
