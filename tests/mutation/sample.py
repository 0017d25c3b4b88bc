"""A seeded random sample of mutmut's mutants of hsr_plugin/, stratified by module.

`make mutation SAMPLE=N` runs it.

mutmut makes about 7,000 mutants of hsr_plugin/; running the fast suite against every one takes
about seven hours on two cores (400 took 26 minutes). A simple random sample estimates the score
of all of them: each module gives its share of the sample (largest remainder), drawn without
replacement with a fixed seed, so the sample is self-weighting and the killed fraction of the
sample is the estimate for the package.

    .venv/bin/python -m tests.mutation.sample --size 300 --seed 0   # writes mutants/sample.txt
    .venv/bin/mutmut run $(cat mutants/sample.txt)
    .venv/bin/python -m tests.mutation.report --sample mutants/sample.txt

The mutants are (re)generated here first with mutmut 3.8's own generation step, so the sample is
drawn from the current source.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from hsr_eval.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = ROOT / "mutants"
SAMPLE = MUTANTS / "sample.txt"


def module_of(name: str) -> str:
    """`hsr_plugin.selection.x_top_fraction_mask__mutmut_3` -> `hsr_plugin.selection`."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def all_mutants(mutants: Path = MUTANTS) -> list[str]:
    """Every mutant name mutmut generated, sorted (the meta files list them, run or not)."""
    names = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        names += json.loads(meta.read_text())["exit_code_by_key"]
    return sorted(names)


def generate(processes: int = 2) -> None:
    """Write mutants/ as `mutmut run` would before it tests anything (mutmut 3.8 internals)."""
    import os

    from mutmut.__main__ import create_mutants
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir

    os.chdir(ROOT)
    MUTANTS.mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    create_mutants(processes)


def stratified_sample(names: list[str], size: int, seed: int) -> list[str]:
    """`size` names, each module's share proportional to its mutant count, seeded."""
    if not 0 < size <= len(names):
        raise ValueError(f"sample size must be in 1..{len(names)}, got {size}")
    by_module: dict[str, list[str]] = {}
    for name in sorted(names):
        by_module.setdefault(module_of(name), []).append(name)
    quotas = {m: size * len(ns) / len(names) for m, ns in by_module.items()}
    counts = {m: int(q) for m, q in quotas.items()}
    # largest remainder: the seats left go to the largest fractional parts (ties by name)
    left = size - sum(counts.values())
    for module in sorted(quotas, key=lambda m: (counts[m] - quotas[m], m))[:left]:
        counts[module] += 1
    rng = random.Random(seed)
    sample = []
    for module in sorted(by_module):
        sample += rng.sample(by_module[module], counts[module])
    return sorted(sample)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, required=True, help="how many mutants to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate()  # mutmut regenerates only the files that changed since its last run
    names = all_mutants()
    sample = stratified_sample(names, args.size, args.seed)
    write_text_atomic(SAMPLE, "".join(f"{n}\n" for n in sample))
    print(f"{len(sample)} of {len(names)} mutants (seed {args.seed}) -> {SAMPLE}")


if __name__ == "__main__":
    main()
