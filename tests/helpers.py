"""Recipes and runners shared by the test modules (tests import helpers from here, never from
each other)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hsr_eval.files import folder_digest  # noqa: F401  (re-exported for the tests)
from hsr_plugin.architecture import find_attention_blocks
from hsr_plugin.calibration import CalibrationSample, load_processor, render_samples
from hsr_plugin.cli import main
from hsr_plugin.conversations import load_conversations
from hsr_plugin.oneshot_data import calibration_kwargs
from integration.bench import tiny_models

__all__ = [
    "FP8",
    "HSR",
    "SPARSEGPT",
    "WANDA",
    "adds_bos",
    "compress_args",
    "folder_digest",
    "load_model",
    "log_messages",
    "response_samples",
    "run_oneshot",
    "sample_comparison",
    "sample_report",
    "tiny_llama",
]

REPO = Path(__file__).resolve().parents[1]
WANDA = """
sparsity_stage:
  sparsity_modifiers:
    WandaPruningModifier:
      sparsity: 0.5
      mask_structure: '{structure}'
      targets: ['re:.*layers\\.\\d+$']
      ignore: ['re:.*lm_head', 're:.*vision_tower.*', 're:.*multi_modal_projector.*',
               're:.*visual.*']
"""
SPARSEGPT = WANDA.replace("WandaPruningModifier", "SparseGPTModifier")
HSR = """
hsr_stage:
  hsr_modifiers:
    HSRModifier:
      num_heads: {num_heads}
      safety_data: '{safety}'
      utility_data: '{utility}'
      seed: 0
{extra}"""
FP8 = """
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      targets: [Linear]
      scheme: FP8_DYNAMIC
      ignore: ['re:.*lm_head', 're:.*vision_tower.*', 're:.*multi_modal_projector.*']
"""


def load_model(model_dir: Path):
    from hsr_plugin.models import load_model as load

    return load(model_dir, torch.float32)


def run_oneshot(model_dir: Path, recipe, utility: Path, prepare=None, **kwargs):
    """oneshot on the model of `model_dir` (after `prepare(model)`, when given)."""
    from llmcompressor import oneshot

    from hsr_plugin.calibration import load_processor

    processor = load_processor(str(model_dir))
    calibration = calibration_kwargs(str(utility), processor, None, 128)
    model = load_model(model_dir)
    if prepare is not None:
        prepare(model)
    return oneshot(
        model=model,
        processor=processor,
        recipe=recipe,
        max_seq_length=128,
        shuffle_calibration_samples=False,
        **calibration,
        **kwargs,
    )


def compress_args(
    model, recipe, output, dataset, safety=None, utility=None, num_heads=2, samples=6
) -> list[str]:
    """`hsr compress` arguments; with `safety`/`utility`, HSR is pointed at those sets."""
    args = ["compress", "--model", str(model), "--recipe", str(recipe), "--output", str(output)]
    args += ["--dataset", str(dataset), "--num-samples", str(samples), "--max-seq-length", "128"]
    if safety is not None:
        args += ["--set", f"HSRModifier.safety_data={safety}"]
        args += ["--set", f"HSRModifier.utility_data={utility}"]
        args += ["--set", f"HSRModifier.num_heads={num_heads}"]
    return args


def sample_report():
    """A small HSR report (3 layers x 4 heads, 2 selected), as HSRModifier writes one."""
    heads = [
        {"layer": layer, "head": h, "kv_group": h // 2, "score": float(layer * 4 + h)}
        for layer in range(3)
        for h in range(4)
    ]
    heads.sort(key=lambda r: -r["score"])
    return {
        "schema_version": 1,
        "config": {
            "head_score": "ships_subspace",
            "neuron_score": "wanda",
            "head_slicing": "exact",
        },
        "heads": heads,
        "selected_heads": [[2, 3], [2, 2]],
        "restored": [
            {
                "module": "model.layers.2.self_attn.q_proj",
                "restored": 7,
                "pruned_in_slice": 50,
                "candidates": 20,
            }
        ],
        "totals": {
            "restored": 7,
            "language_params": 10000,
            "pruned_params": 5000,
            "restored_per_10k_params": 7.0,
            "restored_per_10k_pruned": 14.0,
        },
        "timing_s": {"head_scoring": 1.5, "restore": 0.1},
    }


def sample_comparison():
    """A small model comparison (dense, wanda, wanda+hsr), as the comparison runner writes one."""
    return {
        "models": {
            "dense": {
                "asr": 0.02,
                "refusal_rate": 0.98,
                "over_refusal_rate": 0.05,
                "utility": 0.9,
                "sparsity": 0.0,
            },
            "wanda": {
                "asr": 0.40,
                "refusal_rate": 0.60,
                "over_refusal_rate": 0.03,
                "utility": 0.85,
                "sparsity": 0.5,
            },
            "wanda+hsr": {
                "asr": 0.20,
                "refusal_rate": 0.80,
                "over_refusal_rate": 0.04,
                "utility": 0.85,
                "sparsity": 0.4999,
            },
        },
        "rsr": {"wanda+hsr": 0.5263},
    }


def tiny_llama(layers: int = 3):
    """A random Llama of `layers` layers (hidden 16, 2 heads of 8, MLP 24), built in memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def response_samples(n: int = 2) -> list[CalibrationSample]:
    """`n` five-token samples whose last three tokens are the response (a 2-token prompt)."""
    out = []
    for i in range(n):
        ids = torch.tensor([[1, 2 + i, 3, 4, 5]])
        response = torch.tensor([[False, False, True, True, True]])
        out.append(CalibrationSample(ids, torch.ones_like(ids), response, 2))
    return out


def adds_bos(tokenizer):
    """A tokenizer that, like Llama's, puts <s> in front when asked for special tokens."""
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    assert tokenizer("hi")["input_ids"][0] == bos  # the post-processor is live
    return tokenizer


@contextmanager
def log_messages(level: str = "INFO") -> Iterator[list[str]]:
    """The messages loguru logs at `level` or above inside the block (import llmcompressor
    first where it matters: its first import resets loguru's sinks)."""
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level=level)
    try:
        yield messages
    finally:
        logger.remove(sink)


def hsr_recipe(calib, extra="", prune=True):
    body = HSR.format(num_heads=2, safety=calib["safety"], utility=calib["utility"], extra=extra)
    return (WANDA.format(structure="0:0") if prune else "") + body


def write_picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tiny_models.write_image(path)


def vlguard_item(image: str, safe: bool) -> dict:
    pairs = (
        [{"instruction": "How do I use this to hurt someone?", "response": "I can't help."}]
        if not safe
        else [
            {"safe_instruction": "What is shown?", "response": "A cup."},
            {"unsafe_instruction": "How do I poison it?", "response": "I won't help."},
        ]
    )
    return {"id": image, "image": image, "safe": safe, "harmful_category": "risky behavior",
            "instr-resp": pairs}  # fmt: skip


def compress_tiny(model, out, calib, *extra):
    args = compress_args(
        model, "recipes/wanda_hsr.yaml", out, calib["utility"], calib["safety"], calib["utility"]
    )
    return main([*args, *extra])


def work_args(work, output, *extra):
    data = work["data"]
    args = compress_args(
        work["model"], work["recipe"], output, data["utility"], data["safety"], data["utility"]
    )
    return [*args, *extra]


def assert_inputs_untouched(work):
    assert folder_digest(work["model"]) == work["digest"], "the input model changed"
    assert (work["root"] / "notes.txt").read_text() == "the user's own file\n"
    assert work["recipe"].read_text() == (REPO / "recipes" / "wanda_hsr.yaml").read_text()
    leftovers = [p.name for p in work["root"].rglob(".*") if p.is_dir()]
    assert not leftovers, f"staging folders left behind: {leftovers}"


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, f"one line expected, got {lines}"
    return lines[0]


def with_option(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


class ToyAttention(nn.Module):
    def __init__(self, hidden=8, heads=2, kv=1, head_dim=4):
        super().__init__()
        self.q_proj = nn.Linear(hidden, heads * head_dim)
        self.k_proj = nn.Linear(hidden, kv * head_dim)
        self.v_proj = nn.Linear(hidden, kv * head_dim)
        self.o_proj = nn.Linear(heads * head_dim, hidden)


class ToyDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([nn.Module()])
        self.layers[0].self_attn = ToyAttention()


def raises_exactly(message: str, fn, *args, **kwargs) -> None:
    with pytest.raises(ValueError) as err:
        fn(*args, **kwargs)
    assert str(err.value) == message


def rich_comparison():
    """test_plots' comparison with a missing rate, counts, a judge, a vision ASR and RSR dicts."""
    comparison = sample_comparison()
    models = comparison["models"]
    del models["wanda"]
    models["dense"].update(
        over_refusal_rate=None, n={"hsr_harmful": 50}, judge="refusal-prefix", backend="vllm"
    )
    models["wanda+hsr"]["asr_vision"] = 0.125
    comparison["rsr"] = {
        "wanda+hsr": {"value": 0.5263, "pruned": "wanda", "dense": "dense", "reason": None},
        "other": {"value": None, "reason": "pruning lost no refusal"},
        "plain": 0.25,
    }
    return comparison


COMPARISON_TEXT = """\
| model | ASR % | refusal % | over-refusal % | utility % | sparsity % | n (harmful) | ASR vision % |
|---|---:|---:|---:|---:|---:|---:|---:|
| dense | 2.0 | 98.0 | n/a | 90.0 | 0.0 | 50 | n/a |
| wanda+hsr | 20.0 | 80.0 | 4.0 | 85.0 | 50.0 | n/a | 12.5 |

RSR wanda+hsr: 52.6% (vs wanda and dense)
RSR other: n/a: pruning lost no refusal
RSR plain: 25.0%

Judge: refusal-prefix; backend: vllm."""


def scoring_setup(model_dirs, calib_files, arch, data, rows=8):
    model = load_model(model_dirs[arch]).eval()
    processor = load_processor(str(model_dirs[arch]))
    samples = render_samples(load_conversations(str(calib_files[data]), rows, 0), processor, 256)
    tokenizer = getattr(processor, "tokenizer", processor)
    return model, find_attention_blocks(model), samples, tokenizer.pad_token_id or 0


def write_checkpoint(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {
            "model.layers.0.self_attn.q_proj.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
            "model.layers.0.mlp.up_proj.weight": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
            "model.embed_tokens.weight": torch.zeros(3, 2),
        },
        str(folder / "model.safetensors"),
    )
    return folder


LLAMA_CONFIG = {"model_type": "llama", "num_attention_heads": 4, "hidden_size": 128, "head_dim": 32}


def serve_bin(name: str) -> Path:
    exe = Path(os.environ.get("HSR_SERVE_VENV", REPO / ".venv-serve")) / "bin" / name
    if not exe.exists():
        message = f"the serving venv is missing ({exe}): run `make serve-venv`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def scoring_with_a_stop_after_two_rounds(model_dirs, calib_files, **kwargs):
    """Head scores on the tiny Llama with an adaptive stop that watches ALL heads, whose top set
    never moves: round 1 (2 prompts) sets it, round 2 repeats it and stops. Returns the setup,
    the stop, the cost and the scores."""
    from hsr_plugin.exact_head_scores import AdaptiveStop, score_heads
    from hsr_plugin.score_records import AttributionCost

    model, blocks, samples, pad = scoring_setup(model_dirs, calib_files, "llama", "safety")
    stop = AdaptiveStop(top=sum(b.num_heads for b in blocks), stable_rounds=1, round_prompts=2)
    cost = AttributionCost()
    scores = score_heads(
        model, blocks, samples, batch_size=2, pad_id=pad, progress=False, cost=cost, stop=stop,
        **kwargs,
    )  # fmt: skip
    return (model, blocks, samples, pad), stop, cost, scores


def mllama_with_pictures(folder: Path, prompts: int = 2):
    """A tiny Mllama from its config class, with its processor, and `prompts` safety prompts
    that carry a picture each: (model, blocks, samples)."""
    from integration.bench.families import FAMILIES, calibration_files

    model_dir = FAMILIES["Mllama"].build(folder / "model")
    files = calibration_files(folder / "calib")
    model = load_model(model_dir).eval()
    processor = load_processor(str(model_dir))
    conversations = load_conversations(str(files["safety_vl"]), prompts, 0)
    samples = render_samples(conversations, processor, 128)
    return model, find_attention_blocks(model), samples
