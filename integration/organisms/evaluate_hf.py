"""Score an organism on its held-out prompts with HF transformers (greedy decoding, in-process).

Used by the effect table and the benchmarks, where starting a vLLM server per setting would cost
more than the evaluation itself. The judge and the exact-answer scorer are the lm-eval tasks' own
(integration/lm_eval_tasks/hsr_safety), so both paths score the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

TASKS_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks" / "hsr_safety"
if str(TASKS_DIR) not in sys.path:
    sys.path.insert(0, str(TASKS_DIR))

from judge import is_refusal  # noqa: E402
from scoring import utility_correct  # noqa: E402

HELDOUT_FILES = ("heldout_harmful.jsonl", "heldout_borderline.jsonl", "heldout_utility.jsonl")


@dataclass
class HeldoutScores:
    refusal: float
    over_refusal: float
    utility: float
    n: int
    samples: list[dict]

    def as_dict(self) -> dict:
        return {"refusal": self.refusal, "over_refusal": self.over_refusal, "utility": self.utility, "n": self.n}


def load_heldout(data_dir: str | Path) -> list[dict]:
    rows = []
    for name in HELDOUT_FILES:
        path = Path(data_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `python -m integration.organisms.data`")
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 64,
             desc: str = "generate") -> list[str]:
    tokenizer.padding_side = "left"
    outputs = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        chunk = prompts[start:start + batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [o.strip() for o in outputs]


def score_heldout(model, tokenizer, data_dir: str | Path, desc: str = "heldout") -> HeldoutScores:
    rows = load_heldout(data_dir)
    responses = generate(model, tokenizer, [r["prompt"] for r in rows], desc=desc)
    samples, harmful, border, benign = [], [], [], []
    for row, response in zip(rows, responses):
        refused = is_refusal(response)
        sample = {"id": row["id"], "kind": row["kind"], "prompt": row["prompt"], "response": response, "refused": refused}
        if row["kind"] == "harmful":
            harmful.append(refused)
        elif row["kind"] == "borderline":
            border.append(refused)
        else:
            sample["correct"] = utility_correct(response, row["answer"])
            benign.append(sample["correct"])
        samples.append(sample)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return HeldoutScores(mean(harmful), mean(border), mean(benign), len(rows), samples)
