"""The `hsr` parser: the subcommands, `--debug`, and the options compress and sweep share."""

from __future__ import annotations

import argparse

__all__ = ["add_run_options", "build_parser"]

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
    from hsr_plugin.cli import compress, demo, report, sweep

    parser = argparse.ArgumentParser(prog="hsr", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.set_defaults(passes_on_extra=False)
    sub = parser.add_subparsers(dest="command", required=True)
    debug = _debug_option()
    for command in (compress, sweep, report, demo):
        command.add_parser(sub, parents=[debug])
    return parser


def add_run_options(parser: argparse.ArgumentParser, output_help: str) -> None:
    """The options of a run that prunes with a recipe (`hsr compress`, `hsr sweep`)."""
    parser.add_argument(
        "--model", required=True, help="model id or local directory (never modified)"
    )
    parser.add_argument(
        "--recipe",
        required=True,
        help="llm-compressor YAML recipe: a path, or a bundled recipe by name (e.g. wanda_hsr)",
    )
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument(
        "--dataset",
        required=True,
        help="the pruning stage's calibration data: a conversational JSONL in the plugin's "
        "format, or a dataset name/id that oneshot understands (e.g. open_platypus)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=128, help="calibration samples (default 128)"
    )
    parser.add_argument("--max-seq-length", type=int, default=512, help="default 512")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling calibration rows")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="MODIFIER.FIELD=VALUE",
        help="override a recipe field, e.g. --set HSRModifier.num_heads=4 (repeatable)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output folder that an earlier `hsr` run wrote",
    )
