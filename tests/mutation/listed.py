"""The mutants named in the method-pinning issue, each run against the tests meant to catch it.

    .venv/bin/python -m tests.mutation.listed      # about 3 minutes; part of `make mutation`

Each mutant is one small, realistic change to hsr_plugin/ (a swapped argument, a reversed
ranking, a shifted mask...). It is applied to a throwaway copy of the tree, never to the
checkout, and the listed test files run there. The table goes into tests/mutation/MUTATION.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hsr_eval.tables import markdown_table
from tests.mutation.report import REPORT, write_block

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ("tests/test_e2e_method_reference.py",)
MATH = (
    "tests/test_head_score_math.py",
    "tests/test_slicing.py",
    "tests/test_ablation.py",
    "tests/test_calibration.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    equivalent: str = ""  # why no test can tell it apart, when it cannot


M = "hsr_plugin/modifier.py"
POLICIES = "hsr_plugin/restoration_policies.py"
CALL = "                i_s, i_u, self.safety_top, self.utility_top, self.utility_max"
MUTANTS = [
    Mutant(
        "safety and utility importance swapped",
        POLICIES,
        CALL,
        CALL.replace("i_s, i_u,", "i_u, i_s,"),
        REFERENCE,
    ),
    Mutant(
        "utility exclusion dropped (p = 0, p_max = 1)",
        POLICIES,
        CALL,
        CALL.replace("self.utility_top, self.utility_max", "0.0, 1.0"),
        REFERENCE,
    ),
    Mutant(
        "bottom-h heads selected",
        M,
        "        run.selected = select_top_heads(ranked, self.num_heads)",
        "        run.selected = select_top_heads(ranked[::-1], self.num_heads)",
        REFERENCE,
    ),
    Mutant(
        "seed not passed to the calibration loader",
        M,
        "        conversations = load_conversations(spec, self.num_samples, self.seed)",
        "        conversations = load_conversations(spec, self.num_samples, 0)",
        REFERENCE,
    ),
    Mutant(
        "N:M priority from utility importance",
        POLICIES,
        "            plan.priority = i_s.float().cpu() if ranked else None",
        "            plan.priority = i_u.float().cpu() if ranked else None",
        REFERENCE,
    ),
    Mutant(
        "'pruning not finished' guard removed",
        "hsr_plugin/recipe_checks.py",
        "    unfinished = [type(m).__name__ for m in pruning if not m.ended_]",
        "    unfinished = []",
        ("tests/test_recipe_checks.py",),
    ),
    Mutant(
        "response mask shifted by one token",
        "hsr_plugin/calibration.py",
        "    response[n_prompt:] = True",
        "    response[n_prompt - 1 : -1] = True",
        REFERENCE,
    ),
    Mutant(
        "Wanda importance with squared input norms",
        "hsr_plugin/importance.py",
        "        min=0\n    ).sqrt().unsqueeze(0)",
        "        min=0\n    ).unsqueeze(0)",
        REFERENCE,
    ),
    Mutant(
        "statistics over all tokens",
        "hsr_plugin/neuron_scoring.py",
        '            current.response_mask = batch.pop("labels") != -100',
        '            current.response_mask = batch.pop("labels") != 12345',
        REFERENCE,
    ),
    Mutant(
        "report candidates not limited to the head slices",
        "hsr_plugin/restore.py",
        "            int((candidates & slices).sum()),",
        "            int(candidates.sum()),",
        REFERENCE,
    ),
    Mutant(
        "language_params counting lm_head",
        "integration/hsr_eval/language_weights.py",
        "        and _DECODER_LAYER.search(key) is not None\n",
        "        and (_DECODER_LAYER.search(key) is not None or 'lm_head' in key)\n",
        REFERENCE,
    ),
    Mutant(
        "kv_group = head % group size",
        "hsr_plugin/architecture.py",
        "        return head // self.kv_group_size",
        "        return head % self.kv_group_size",
        ("tests/test_slicing.py", *REFERENCE),
    ),
    Mutant(
        "KL(q||p) instead of KL(p||q)",
        "hsr_plugin/head_score_math.py",
        "    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)",
        "    return (log_q.exp() * (log_q - log_p)).sum(-1).clamp(min=0.0)",
        MATH,
    ),
    Mutant(
        "subspace rank ignored",
        "hsr_plugin/head_score_math.py",
        "    return vh[:rank].T  # (d, rank), orthonormal columns",
        "    return vh[:1].T",
        MATH,
    ),
    Mutant(
        "principal angles combined by max",
        "hsr_plugin/head_score_math.py",
        "    return float(torch.arccos(cosines).sum())",
        "    return float(torch.arccos(cosines).max())",
        MATH,
    ),
    Mutant(
        "right padding",
        "hsr_plugin/calibration.py",
        "            ids[i, width - n :] = s.input_ids[0, :n]\n"
        "            mask[i, width - n :] = 1\n"
        "            labels[i, width - n :] =",
        "            ids[i, :n] = s.input_ids[0, :n]\n"
        "            mask[i, :n] = 1\n"
        "            labels[i, :n] =",
        MATH,
    ),
    Mutant(
        "position_ids not set with left padding",
        "hsr_plugin/calibration.py",
        '            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)',
        "            pass",
        MATH,
        equivalent="every supported decoder uses rotary position embeddings, where a constant "
        "shift of all positions leaves attention unchanged; padded positions are masked",
    ),
    Mutant(
        "o_proj ablation as a forward hook on the output rows",
        "hsr_plugin/ablation.py",
        '        (output, "forward_pre", _scale_input(spans(output_band), eps)),',
        '        (output, "forward", _scale_output(spans(output_band), eps)),',
        MATH,
    ),
    Mutant(
        "reference-mode k/v ablation removed",
        "hsr_plugin/ablation.py",
        '    if mode == "reference":  # the unit is the KV group g here: its k/v rows go too',
        "    if False:",
        MATH,
    ),
]


def _copy_tree(target: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    for name in files.splitlines():
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run(mutant: Mutant, tree: Path) -> str:
    path = tree / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        return "stale (the original line changed: update this list)"
    path.write_text(original.replace(mutant.old, mutant.new))
    # the copy's own packages come first: hsr_plugin from the copy's root (pytest's rootdir) and
    # hsr_eval from its integration/ folder, ahead of the checkout's editable installs
    env = dict(os.environ, PYTHONPATH=str(tree / "integration"))
    try:
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests]
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=1800, env=env)
    finally:
        path.write_text(original)
    return "killed" if proc.returncode else "survived"


def main() -> None:
    rows, killed, judged = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="hsr-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for mutant in MUTANTS:
            status = run(mutant, tree)
            if mutant.equivalent and status == "survived":
                status = "equivalent"
            else:
                judged += 1
                killed += status == "killed"
            print(f"{status:10s} {mutant.name}", flush=True)
            rows.append([mutant.name, f"`{mutant.path}`", status, mutant.equivalent or ""])
    body = "\n".join(
        [
            f"Named mutants killed: **{killed} of {judged}** non-equivalent.",
            "",
            markdown_table(["mutant", "file", "result", "why equivalent"], rows, numeric_from=99),
            "",
            f"_Written by `python -m tests.mutation.listed` on {time.strftime('%Y-%m-%d')}._",
        ]
    )
    write_block("named-mutants", body)
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
