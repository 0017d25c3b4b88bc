"""Write tests/mutation/MUTATION.md from the results mutmut left in mutants/ (`make mutation`).

    .venv/bin/mutmut run [MUTANT_GLOB]        # mutates hsr_plugin/ (config: pyproject.toml)
    .venv/bin/python -m tests.mutation.report  # the score, per module, and every survivor

With `--sample mutants/sample.txt` (tests/mutation/sample.py) only the sampled mutants count, and
the score comes with its 95% Wilson interval as the estimate for all of hsr_plugin/.

A mutant is killed when a test failed with it, survived when the tests passed, and not run when
mutmut did not reach it (a partial run). Survivors that are equivalent to the original (no test
could tell them apart) are explained in EQUIVALENT and counted apart. The score is
killed / (killed + survived - equivalent + mutants with no covering test).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from hsr_eval.files import replace_generated_block, write_text_atomic
from hsr_eval.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = ROOT / "mutants"
REPORT = ROOT / "tests" / "mutation" / "MUTATION.md"

# mutant name -> why no test can tell it from the original
_DIM = "the tensor is checked to be 2-D, so dim 1 and dim -1 are the same axis"
_FULL = "the leading rows of V are the same whether or not the SVD is full"
_SVDVALS = "singular values are never negative: the lower bound of the clamp never acts"
_SAME_LENGTH = "both sequences always have the same length here, so strict= never acts"
_LOCALE = "the locale's encoding is UTF-8 wherever the suite runs (C.UTF-8), as the mutant reads"
_ONE_DEVICE = (
    "equivalent on a CPU-only machine (the execution device is the CPU either way); a GPU run "
    "would tell them apart"
)
_PAD = (
    "left-padded positions are masked out of attention and are never response tokens, so the pad "
    "token's id changes no score"
)
EQUIVALENT: dict[str, str] = {
    "hsr_plugin.head_score_math.x_last_token_kl__mutmut_13": _DIM,
    "hsr_plugin.head_score_math.x_last_token_kl__mutmut_20": _DIM,
    "hsr_plugin.head_score_math.x_last_token_kl__mutmut_26": _DIM,
    "hsr_plugin.head_score_math.x__leading_subspace__mutmut_5": _FULL,
    "hsr_plugin.head_score_math.x__leading_subspace__mutmut_6": _FULL,
    "hsr_plugin.head_score_math.x_principal_angle_score__mutmut_30": _SVDVALS,
    "hsr_plugin.head_score_math.x_principal_angle_score__mutmut_36": _SVDVALS,
    "hsr_plugin.selection.x_nm_compatible_mask__mutmut_71": "argsort sorts the last dim by default",
    "hsr_plugin.cli.x_compress__mutmut_72": "PyYAML tests `if sort_keys:`: None acts as False",
    "hsr_plugin.sweep.x_points__mutmut_12": _SAME_LENGTH,
    "hsr_plugin.neuron_scoring.x_for_each_weight_gradient__mutmut_68": _SAME_LENGTH,
    "hsr_plugin.neuron_scoring.x_for_each_weight_gradient__mutmut_51": (
        "with labels and no past, the loss is the same; use_cache only builds a KV cache that is "
        "dropped"
    ),
    "hsr_plugin.placement.x_decide_placement__mutmut_56": "None is the field's default",
    "hsr_plugin.restore.x_budget_masks__mutmut_7": (
        "at total == cap the selection keeps every position: equal masks, new tensors"
    ),
    "hsr_eval.files.x_replace_generated_block__mutmut_5": _LOCALE,
    "hsr_plugin.neuron_scoring.x_for_each_weight_gradient__mutmut_31": _ONE_DEVICE,
    "hsr_plugin.modifier.xǁHSRModifierǁ_restore_gain__mutmut_25": _ONE_DEVICE,
    "hsr_plugin.exact_head_scores.x_score_heads__mutmut_33": _ONE_DEVICE,
    "hsr_plugin.plots.x_plot_safety_bars__mutmut_55": _SAME_LENGTH,
    "hsr_plugin.calibration.x_encode_conversation__mutmut_16": (
        "chat templates test `if add_generation_prompt`: None acts as False"
    ),
    "hsr_plugin.cli.x__one_line__mutmut_19": "' | '.join of a single line is that line",
    "hsr_plugin.plots.x_head_scores_figure__mutmut_88": (
        "with ax=None, Figure.colorbar takes the image's own axes: the same axes"
    ),
    "hsr_plugin.plots.x_summary_markdown__mutmut_107": (
        "a missing timing_s gives None instead of {}: both skip the timing table"
    ),
    "hsr_plugin.cli.x__read_json__mutmut_5": _LOCALE,
    "hsr_plugin.selection.x_nm_compatible_mask__mutmut_44": (
        "an all-zero priority orders the positions the same in any dtype"
    ),
    "hsr_plugin.sweep.x_run_sweep__mutmut_98": (
        "without a processor, oneshot loads the same one from the model's name_or_path"
    ),
    "hsr_plugin.neuron_scoring.x_for_each_weight_gradient__mutmut_64": _SAME_LENGTH,
    "hsr_plugin.plots.x_sweep_pareto_figure__mutmut_37": "viridis is matplotlib's default colormap",
    "hsr_plugin.plots.x_sweep_pareto_figure__mutmut_45": (
        "with ax=None, Figure.colorbar takes the scatter's own axes: the same axes"
    ),
    "hsr_plugin.plots.x_sweep_pareto_figure__mutmut_69": "2 is a Line2D's default zorder",
    "hsr_plugin.importance.x__select_tokens__mutmut_18": _ONE_DEVICE,
    "hsr_plugin.modifier.xǁHSRModifierǁ_plan_mlp__mutmut_30": _ONE_DEVICE,
    "hsr_plugin.modifier.xǁHSRModifierǁ_restore_gain__mutmut_30": _ONE_DEVICE,
    "hsr_plugin.importance.xǁInputNormAccumulatorǁupdate__mutmut_12": _ONE_DEVICE,
    "hsr_plugin.importance.xǁInputNormAccumulatorǁ__init____mutmut_9": (
        "torch's default dtype is float32, the dtype the line names"
    ),
    "hsr_plugin.first_order_scores.x_first_order_unit_scores__mutmut_103": (
        "with labels and no past, the loss and its gradients are the same; use_cache only builds "
        "a KV cache that is dropped"
    ),
    "hsr_plugin.importance.xǁHessianAccumulatorǁ__init____mutmut_11": (
        "torch's default dtype is float32, the dtype the line names"
    ),
    "hsr_plugin.plots.x_summary_markdown__mutmut_105": (
        "a missing timing_s gives None instead of {}: both skip the timing table"
    ),
    "hsr_plugin.calibration.x_load_processor__mutmut_15": (
        "every transformers processor and tokenizer has a chat_template attribute (None if unset)"
    ),
    "hsr_plugin.exact_head_scores.x_score_heads__mutmut_100": _ONE_DEVICE,
    "hsr_plugin.exact_head_scores.x_score_heads__mutmut_60": (
        "the ablation tests only `mode == 'reference'`; any other value is the exact mode"
    ),
    "hsr_plugin.decoder_stack.xǁDecoderStackǁrun_from__mutmut_11": (
        "transformers 5 passes a decoder layer its hidden states as the only positional "
        "argument: the captured args are empty, and replicating () gives ()"
    ),
    "hsr_plugin.exact_head_scores.x_heads_per_pass__mutmut_23": (
        "a replica of a non-empty batch takes at least 4 bytes, so max(per_replica, 1 or 2) is "
        "per_replica"
    ),
    "hsr_plugin.modifier.xǁHSRModifierǁon_initialize__mutmut_71": _PAD,
    "hsr_plugin.modifier.xǁHSRModifierǁon_initialize__mutmut_74": _PAD,
    "hsr_plugin.modifier.xǁHSRModifierǁon_initialize__mutmut_67": _PAD,
    "hsr_plugin.oneshot_data.x_conversation_dataset__mutmut_1": (
        "calibration_kwargs, its one caller in hsr_plugin, always passes the seed"
    ),
    "hsr_plugin.neuron_scoring.x_collect_statistics__mutmut_87": _ONE_DEVICE,
    "hsr_plugin.neuron_scoring.x_collect_statistics__mutmut_96": (
        "use_cache=None falls back to the config's use_cache: at most a KV cache that is dropped, "
        "the same inputs reach the hooks"
    ),
    "hsr_plugin.neuron_scoring.xǁ_CurrentSampleǁ__init____mutmut_2": (
        "the statistics loop sets `seen` to a new set before each sample, before any hook reads it"
    ),
    "hsr_plugin.modifier.xǁHSRModifierǁ_plan_candidates__mutmut_23": (
        "the statistics hooks are added and removed inside collect_statistics by whichever "
        "HooksMixin owns them, and llm-compressor disables hooks class-wide: same passes"
    ),
    "hsr_plugin.calibration.x_prompt_batches__mutmut_35": (
        "torch.full with an int fill value infers int64, the dtype the line names"
    ),
    "hsr_plugin.decoder_stack.x_find_decoder_stack__mutmut_6": (
        "the slice ends before the dot that precedes the layer index: there is no trailing dot"
    ),
    "hsr_plugin.decoder_stack.x_find_decoder_stack__mutmut_5": (
        "module names from named_modules never start with '.' or whitespace"
    ),
}

# mutmut's verdicts (mutmut.stats.status_by_exit_code) -> the columns of the table
_COLUMN = {
    "killed": "killed",
    "caught by type check": "killed",
    "survived": "survived",
    "no tests": "no tests",
    "timeout": "timeout",
    "segfault": "timeout",  # -9: killed by the CPU-time limit's SIGKILL
    "suspicious": "timeout",
}


def _status(code) -> str:
    from mutmut.stats import status_by_exit_code

    return _COLUMN.get(status_by_exit_code[code], "not run")  # not checked, interrupted, skipped


def collect() -> dict[str, str]:
    results = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[name] = _status(code)
    return results


def _diff(name: str) -> str:
    mutmut = Path(sys.executable).with_name("mutmut")
    proc = subprocess.run([str(mutmut), "show", name], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("+", "-"))]
    return " / ".join(ln for ln in lines if not ln.startswith(("+++", "---")))[:160]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n (sound near 0 and 1)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def render(results: dict[str, str], population: int | None = None) -> str:
    by_module: dict[str, Counter] = {}
    for name, status in results.items():
        module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]  # mutmut: <module>.x_<function>...
        by_module.setdefault(module, Counter())[status] += 1
    rows, total = [], Counter()
    for module, counts in sorted(by_module.items()):
        total += counts
        rows.append(
            [module, *(counts[k] for k in ("killed", "survived", "no tests", "timeout", "not run"))]
        )
    rows.append(
        ["**all**", *(total[k] for k in ("killed", "survived", "no tests", "timeout", "not run"))]
    )
    survivors = sorted(n for n, s in results.items() if s == "survived" and n not in EQUIVALENT)
    equivalent = sum(1 for n in EQUIVALENT if results.get(n) == "survived")
    judged = total["killed"] + total["survived"] - equivalent + total["no tests"]
    score = f"{100 * total['killed'] / judged:.1f}%" if judged else "n/a"
    parts = [
        f"Score: **{score}** of the non-equivalent mutants that were run killed "
        f"({total['killed']} of {judged}); {total['not run']} of {len(results)} mutants not run.",
        "",
    ]
    if population is not None:
        low, high = wilson_interval(total["killed"], judged)
        parts[-1:] = [
            f"The {len(results)} mutants are a seeded random sample, stratified by module, of all "
            f"{population} mutants of hsr_plugin/: the estimated score of the whole package is "
            f"{score}, 95% Wilson interval {100 * low:.1f}% to {100 * high:.1f}%.",
            "",
        ]
    parts += [
        markdown_table(["module", "killed", "survived", "no tests", "timeout", "not run"], rows),
        "",
        "### Surviving mutants",
        "",
    ]
    parts += [f"- `{n}`: {_diff(n)}" for n in survivors] or ["none"]
    parts += ["", "### Equivalent mutants", ""]
    parts += [
        f"- `{n}`: {why}" for n, why in sorted(EQUIVALENT.items()) if results.get(n) == "survived"
    ] or ["none"]
    parts += ["", f"_Written by `python -m tests.mutation.report` on {time.strftime('%Y-%m-%d')}._"]
    return "\n".join(parts)


SECTIONS = {
    "mutmut": "## mutmut over hsr_plugin/",
    "mutmut-rerun": "### The survivors above, run again against the final tests",
    "mutmut-seed1": "## An intermediate sample (seed 1), before the tests written against it",
    "mutmut-baseline": "## Baseline: the first sample (seed 0), before tests written against it",
    "named-mutants": "## The named mutants of the method-pinning issue",
}


def write_block(name: str, body: str) -> None:
    """Put `body` into its generated block of tests/mutation/MUTATION.md (the file and its blocks
    are made on demand)."""
    if not REPORT.is_file():
        write_text_atomic(REPORT, "# Mutation testing\n\nWritten by `make mutation`.\n")
    if f"<!-- {name}:begin -->" not in REPORT.read_text():
        block = f"\n{SECTIONS[name]}\n\n<!-- {name}:begin -->\n<!-- {name}:end -->\n"
        write_text_atomic(REPORT, REPORT.read_text().rstrip() + "\n" + block)
    replace_generated_block(REPORT, name, body)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scope", help="what this run covered, when it was narrowed")
    parser.add_argument("--sample", type=Path, help="count only these mutants (one name a line)")
    parser.add_argument(
        "--block", default="mutmut", choices=sorted(SECTIONS), help="the block of MUTATION.md"
    )
    parser.add_argument(
        "--no-estimate",
        action="store_true",
        help="the --sample list is not a random sample (e.g. earlier survivors run again)",
    )
    args = parser.parse_args(argv)
    if not MUTANTS.is_dir():
        raise SystemExit("error: no mutants/ folder: run `make mutation` (mutmut run) first")
    everything = collect()
    results, population = everything, None
    if args.sample:
        wanted = args.sample.read_text().split()
        missing = [n for n in wanted if n not in results]
        if missing:
            unknown = f"{len(missing)} sampled mutants unknown to mutmut"
            raise SystemExit(f"error: {unknown}: {missing[0]}")
        results = {n: results[n] for n in wanted}
        population = None if args.no_estimate else len(everything)
    text = render(results, population)
    if args.scope:
        text = f"Scope of this run: {args.scope}\n\n{text}"
    write_block(args.block, text)
    print(text)


if __name__ == "__main__":
    main()
