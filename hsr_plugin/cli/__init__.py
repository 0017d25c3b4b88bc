"""The `hsr` command line: compress with a recipe, summarise a report, run the demo.

hsr compress --model MODEL --recipe recipes/wanda_hsr.yaml --output OUT [--dataset DATA]
hsr sweep --model MODEL --recipe RECIPE --dataset DATA --eval-data DIR --output OUT
          --grid num_heads=4,8 --grid neuron_score=wanda,restore_gain ...
hsr report OUT/hsr_report.json [--comparison EVAL/comparison.json] [--out DIR]
hsr demo [--out outputs/demo]

One module per subcommand (`compress`, `sweep`, `report`, `demo`), each with `add_parser`,
which registers its options and its function with `set_defaults(func=...)`; the parser that
gathers them is built here. The options that compress and sweep share are defined once in
`options`, the checks every run makes before any work in `inputs`, and what a failure prints in
`errors`. Importing `hsr_plugin` registers HSRModifier, which imports llm-compressor (a few
seconds, even for `hsr --help`); the subcommands import the rest of what they need themselves.
"""

from __future__ import annotations

import argparse
import sys

from hsr_plugin.cli import compress, demo, report, sweep
from hsr_plugin.cli.errors import report_failure

__all__ = ["build_parser", "main", "parse", "run"]

DESCRIPTION = "The `hsr` command line: compress with a recipe, summarise a report, run the demo."


def _debug_option() -> argparse.ArgumentParser:
    # SUPPRESS keeps a subcommand's default from overwriting `hsr --debug compress ...`
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """`hsr` and its subcommands, each registered by its own module's `add_parser`."""
    parser = argparse.ArgumentParser(prog="hsr", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.set_defaults(passes_on_extra=False)
    sub = parser.add_subparsers(dest="command", required=True)
    debug = _debug_option()
    for command in (compress, sweep, report, demo):
        command.add_parser(sub, parents=[debug])
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; only `hsr demo` takes unknown options (it passes them on)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and not args.passes_on_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`) and run its subcommand; errors propagate."""
    args = parse(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


def run(argv: list[str] | None = None) -> int:
    """The `hsr` console script: `main`, with failures turned into exit codes.

    A user error (`HSRUserError`, an invalid field) prints one line `error: ...` and exits with
    2; out of memory prints one line of advice and exits with 3; anything else is a bug: its
    traceback, a line saying so, and exit code 1. `--debug` (anywhere on the line) shows every
    traceback.
    """
    args = parse(argv)
    try:
        result = args.func(args)
    except (SystemExit, Exception) as err:
        return report_failure(err, debug=args.debug)
    return result if isinstance(result, int) else 0
