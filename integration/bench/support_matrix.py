"""The support matrix: every family of `families.py` x every HSR setting, run end to end.

Each cell builds the family's tiny model (its own config class; its own processor for the VLMs
probed with pictures), runs `oneshot` with Wanda 50% and then with Wanda 50% + HSR in that
setting, and checks the result (`families.probe`). A cell shows ✓ and the number of restored
weights, or the one-line reason HSR or the probe gave. The table goes to
`integration/bench/SUPPORT.md` and between the markers in integration/docs/families.md.

    .venv/bin/python -m integration.bench.support_matrix            # every family (minutes)
    .venv/bin/python -m integration.bench.support_matrix --families Llama,Phi-3 --no-docs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from loguru import logger
from tqdm import tqdm

from hsr_plugin.architecture import UnsupportedArchitectureError
from integration.bench.families import (
    FAMILIES,
    MODES,
    NOT_PROBED,
    ProbeFailure,
    calibration_files,
    probe,
)

HERE = Path(__file__).resolve().parent
FAMILIES_DOC = HERE.parent / "docs" / "families.md"
BEGIN = "<!-- support-matrix:begin (written by integration/bench/support_matrix.py) -->"
END = "<!-- support-matrix:end -->"


def _cell(family, mode: str, model_dir: Path | None, data, build_error: str | None) -> dict:
    if build_error is not None:
        return {"ok": False, "reason": build_error}
    if mode in family.notes:
        return {"ok": None, "reason": family.notes[mode]}
    if MODES[mode][1] and not family.pictures:
        return {"ok": None, "reason": "text-only family"}
    try:
        result = probe(model_dir, data, mode, family.prune_ignore)
    except ProbeFailure as err:
        return {"ok": False, "reason": f"probe failed: {err}"}
    except UnsupportedArchitectureError as err:  # HSR's own one-line refusal
        return {"ok": False, "reason": f"refused: {str(err).splitlines()[0]}"}
    except Exception as err:  # every failure is a cell of the matrix, not a crash of the bench
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return {"ok": False, "reason": f"error: {type(err).__name__}: {first}"[:240]}
    return {"ok": True, **result}


def run(names: list[str], root: Path) -> dict:
    data = calibration_files(root / "data")
    results: dict[str, dict] = {}
    cells = [(n, m) for n in names for m in MODES]
    bar = tqdm(total=len(cells), desc="support matrix")
    for name in names:
        family = FAMILIES[name]
        model_dir, build_error = None, None
        try:
            model_dir = family.build(root / name.replace(" ", "_").replace("/", "_"))
        except Exception as err:
            build_error = f"the tiny model does not build: {type(err).__name__}: {err}"[:200]
        results[name] = {}
        for mode in MODES:
            results[name][mode] = _cell(family, mode, model_dir, data, build_error)
            bar.update(1)
        if family.prune_note:
            results[name]["note"] = family.prune_note
    bar.close()
    return results


def _mark(cell: dict) -> str:
    if cell["ok"]:
        return f"✓ ({cell['restored']})"
    if cell["ok"] is None:
        return f"– {cell['reason']}"
    return f"✗ {cell['reason']}"


def markdown(results: dict) -> str:
    modes = list(MODES)
    lines = [
        "| family | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    notes = []
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(_mark(row[m]) for m in modes) + " |")
        if "note" in row:
            notes.append(f"- {name}: {row['note']}.")
        unsliced = next((c.get("unsliced") for c in row.values() if isinstance(c, dict)
                         and c.get("unsliced")), None)  # fmt: skip
        if unsliced:
            shared = ", ".join(sorted({u.rsplit(".", 1)[-1] for u in unsliced}))
            notes.append(
                f"- {name}: the shared projections ({shared}) belong to no head; HSR leaves "
                "them as pruned and lists them in the report."
            )
    text = "\n".join(lines) + "\n"
    text += "\nNot in the matrix:\n" + "".join(
        f"- {names}: {reason}.\n" for names, reason in NOT_PROBED.items()
    )
    legend = (
        "\nColumns: *text* runs HSR's defaults (exact Ships-subspace head scores, Wanda neuron "
        "scores) on text rows; *pictures* the same on rows with a picture (the row's `image` "
        "field, or Hugging Face content parts); every other column changes one setting from "
        "the defaults.\n"
        "\n✓ (n): Wanda 50% + HSR (`num_heads: 2`) ran end to end on the family's tiny model "
        "and restored n weights, all of them pruned positions in the selected heads' slices (or "
        "MLP channels) set to their exact dense values, with the report's counts equal to the "
        "tensors'; N:M: the 2:4 pattern holds after HSR (restoring nothing is expected there). "
        "– : not applicable or not probed, with the reason. ✗ refused: HSR's one-line error, "
        "raised before any scoring; ✗ probe failed / error: a defect.\n"
    )
    return text + legend + ("\n" + "\n".join(notes) + "\n" if notes else "")


def write_docs(table: str, doc: Path = FAMILIES_DOC) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no support-matrix markers")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    doc.write_text(before + BEGIN + "\n" + table + END + after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path, default=HERE / "SUPPORT.md")
    parser.add_argument(
        "--no-docs", action="store_true", help="do not update integration/docs/families.md"
    )
    args = parser.parse_args(argv)
    names = args.families.split(",") if args.families else list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"error: unknown families {unknown}; known: {', '.join(FAMILIES)}")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="hsr-support-") as tmp:
        results = run(names, Path(tmp))
    table = markdown(results)
    args.out.write_text("# HSR support matrix\n\n" + table)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_docs:
        write_docs(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
