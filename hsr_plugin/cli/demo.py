"""`hsr demo`: hand over to the checkout's end-to-end demo (`integration/demo/run_demo.py`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loguru import logger

__all__ = ["add_parser", "demo", "find_checkout"]


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        parents=parents,
        help="end-to-end demo on the embedded organism (needs a repo checkout); other options "
        "(--method, --organism, --num-heads, --limit, --update-docs) go to "
        "integration/demo/run_demo.py",
    )
    parser.add_argument("--out", default="outputs/demo")
    parser.set_defaults(func=demo, passes_on_extra=True)


def demo(args: argparse.Namespace) -> int:
    """Replace this process with the demo module, run from the checkout's root."""
    root = find_checkout()
    # The demo is a module of the checkout (`integration`), run from the checkout's root; its
    # output folder stays where the user named it.
    out = str(Path(args.out).resolve())
    cmd = [sys.executable, "-m", "integration.demo.run_demo", "--out", out, *args.extra]
    logger.info(f"(cd {root}) " + " ".join(cmd))
    os.chdir(root)
    os.execv(sys.executable, cmd)


def find_checkout() -> Path:
    """The working directory or the nearest parent that is a checkout of this repository."""
    # The working directory and its parents only: an installed package is no checkout, and the
    # demo must never run (or write) inside site-packages.
    for base in [Path.cwd(), *Path.cwd().parents]:
        if (base / "integration" / "demo" / "run_demo.py").is_file():
            return base
    raise SystemExit(
        "error: `hsr demo` runs from a checkout of the hsr-plugin repository "
        "(integration/demo/run_demo.py was not found); clone it and run `make demo`"
    )
